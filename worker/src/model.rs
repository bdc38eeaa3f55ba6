//! The study's network, built from `nn::Path`s so every variable carries the name PyTorch gives it
//! (`conv.2.conv.0.weight`, `blocks.0.attn.qkv.weight`, `fc.weight`, ...; see seed-state-dict.txt).
//!
//! Initialisation follows PyTorch's defaults as the seed relied on them, set explicitly because tch's
//! differ: conv Kaiming-normal (fan_out, ReLU gain), BN weight 1 and bias 0, Linear U(+-1/sqrt(fan_in)).
use crate::ddp::ProcessGroup;
use std::cell::OnceCell;
use std::rc::Rc;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Set once by [`SeedNet::use_sync_batch_norm`]; every BN layer holds a handle to it.
type SyncGroup = Rc<OnceCell<Rc<ProcessGroup>>>;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Widths of the four stages; the study's are 64, 128, 256, 512.
    pub widths: Vec<i64>,
    /// Attention blocks (4 in the study).
    pub depth: usize,
    pub heads: i64,
    pub classes: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            widths: vec![64, 128, 256, 512],
            depth: 4,
            heads: 4,
            classes: 10,
        }
    }
}

impl ModelConfig {
    /// A few-thousand-parameter variant with the same structure, for tests and the CPU demo.
    pub fn tiny() -> Self {
        ModelConfig {
            widths: vec![8, 16, 32, 64],
            depth: 1,
            heads: 2,
            classes: 10,
        }
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (c_out * k * k)).
    let std = (2.0 / (c_out * k * k) as f64).sqrt();
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// BatchNorm2d, or SyncBatchNorm in training once the model is given a process group.
#[derive(Debug)]
struct Bn {
    inner: nn::BatchNorm,
    sync: SyncGroup,
}

impl Bn {
    fn forward_t(&self, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        match (train, self.sync.get()) {
            (true, Some(pg)) => {
                let (w, b) = (self.inner.ws.as_ref(), self.inner.bs.as_ref());
                pg.sync_batch_norm(
                    x,
                    w.expect("affine BN"),
                    b.expect("affine BN"),
                    &self.inner.running_mean,
                    &self.inner.running_var,
                    BN_MOMENTUM,
                    BN_EPS,
                )
            }
            _ => Ok(self.inner.forward_t(x, train)),
        }
    }
}

fn bn(p: nn::Path, c: i64, sync: &SyncGroup) -> Bn {
    let cfg = nn::BatchNormConfig {
        eps: BN_EPS,
        momentum: BN_MOMENTUM,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    Bn {
        inner: nn::batch_norm2d(p, c, cfg),
        sync: sync.clone(),
    }
}

fn linear(p: nn::Path, d_in: i64, d_out: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        d_in,
        d_out,
        nn::LinearConfig {
            ws_init: init,
            bs_init: bias.then_some(init),
            bias,
        },
    )
}

/// `conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 -> BN`, then `BN(ReLU(branch + x))`.
#[derive(Debug)]
struct ResidualBlock {
    convs: [nn::Conv2D; 3],
    bns: [Bn; 3],
    bn: Bn,
}

impl ResidualBlock {
    fn new(p: nn::Path, c: i64, sync: &SyncGroup) -> Self {
        // PyTorch indices inside the block's `conv` Sequential: ReLUs sit at 2 and 5.
        let q = &p / "conv";
        ResidualBlock {
            convs: [
                conv(&q / 0, c, c, 1, 1, 0),
                conv(&q / 3, c, c, 3, 1, 1),
                conv(&q / 6, c, c, 1, 1, 0),
            ],
            bns: [
                bn(&q / 1, c, sync),
                bn(&q / 4, c, sync),
                bn(&q / 7, c, sync),
            ],
            bn: bn(&p / "bn", c, sync),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let h = self.bns[0]
            .forward_t(&self.convs[0].forward(x), train)?
            .relu();
        let h = self.bns[1]
            .forward_t(&self.convs[1].forward(&h), train)?
            .relu();
        let h = self.bns[2].forward_t(&self.convs[2].forward(&h), train)?;
        self.bn.forward_t(&(h + x).relu(), train)
    }
}

/// A stem or down-sampling conv with its BN (no ReLU), followed by two residual blocks.
#[derive(Debug)]
struct Stage {
    conv: nn::Conv2D,
    bn: Bn,
    blocks: [ResidualBlock; 2],
}

#[derive(Debug)]
struct AttentionBlock {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
}

impl AttentionBlock {
    fn new(p: nn::Path, d: i64, heads: i64) -> Self {
        let ln = |q: nn::Path| nn::layer_norm(q, vec![d], Default::default());
        let attn = &p / "attn";
        let mlp = &p / "mlp";
        AttentionBlock {
            norm1: ln(&p / "norm1"),
            qkv: linear(&attn / "qkv", d, 3 * d, false),
            proj: linear(&attn / "proj", d, d, true),
            norm2: ln(&p / "norm2"),
            fc1: linear(&mlp / "fc1", d, d, true),
            fc2: linear(&mlp / "fc2", d, d, true),
            heads,
        }
    }

    fn attention(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().expect("attention input is [B, N, C]");
        let dh = c / self.heads;
        // [B, N, 3C] -> [3, B, H, N, dh]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, self.heads, dh])
            .permute([2, 0, 3, 1, 4]);
        // One unbind (and one stack in backward), as the study's `qkv.unbind(0)`: three `select`s
        // cost six ops a block for the same views.
        let (q, k, v) = match &qkv.unbind(0)[..] {
            [q, k, v] => (q.shallow_clone(), k.shallow_clone(), v.shallow_clone()),
            _ => unreachable!("qkv has three parts"),
        };
        // Softmax in fp32 under bf16 autocast, as PyTorch's autocast runs it (a bf16 softmax loses
        // the small attention weights); fp32 and fp64 runs keep their own precision.
        let kind = if q.kind() == tch::Kind::Double {
            tch::Kind::Double
        } else {
            tch::Kind::Float
        };
        let a = (q.matmul(&k.transpose(-2, -1)) * (dh as f64).powf(-0.5)).softmax(-1, kind);
        // [B, H, N, dh] -> [B, N, C]
        self.proj
            .forward(&a.matmul(&v).transpose(1, 2).reshape([b, n, c]))
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attention(&self.norm1.forward(x));
        let h = self.fc1.forward(&self.norm2.forward(&x)).gelu("none");
        &x + self.fc2.forward(&h)
    }
}

/// The study's network. Variables live in the `VarStore` the model was built on.
#[derive(Debug)]
pub struct SeedNet {
    stages: Vec<Stage>,
    blocks: Vec<AttentionBlock>,
    fc: nn::Linear,
    channels_last: bool,
    sync: SyncGroup,
}

impl SeedNet {
    pub fn new(root: &nn::Path, cfg: &ModelConfig) -> Self {
        let conv_seq = root / "conv";
        let sync = SyncGroup::default();
        let mut c_in = 3;
        let stages = cfg
            .widths
            .iter()
            .enumerate()
            .map(|(s, &w)| {
                // PyTorch's flat `conv` Sequential: [conv, bn, res, res] per stage.
                let i = 4 * s as i64;
                // The stem keeps the resolution; the three down-sampling convs halve it.
                let stride = if s == 0 { 1 } else { 2 };
                let stage = Stage {
                    conv: conv(&conv_seq / i, c_in, w, 3, stride, 1),
                    bn: bn(&conv_seq / (i + 1), w, &sync),
                    blocks: [
                        ResidualBlock::new(&conv_seq / (i + 2), w, &sync),
                        ResidualBlock::new(&conv_seq / (i + 3), w, &sync),
                    ],
                };
                c_in = w;
                stage
            })
            .collect();
        let d = *cfg.widths.last().expect("four widths");
        let blocks = (0..cfg.depth)
            .map(|i| AttentionBlock::new(&(root / "blocks") / i, d, cfg.heads))
            .collect();
        // After the 2x2 max-pool over (token, channel): 8 tokens x d/2 channels.
        let fc = linear(root / "fc", 8 * d / 2, cfg.classes, true);
        SeedNet {
            stages,
            blocks,
            fc,
            channels_last: false,
            sync,
        }
    }

    /// Turns every BN layer into SyncBatchNorm over `pg` (in training; evaluation uses the running
    /// statistics, which SyncBatchNorm keeps identical on every rank).
    pub fn use_sync_batch_norm(&self, pg: Rc<ProcessGroup>) {
        let _ = self.sync.set(pg);
    }

    /// Switches to channels-last (NHWC): the 4-D variables of `vs` (conv weights) are converted in
    /// place and inputs are converted in `forward_t`; activations follow their inputs' format.
    pub fn use_channels_last(&mut self, vs: &nn::VarStore) {
        self.channels_last = true;
        tch::no_grad(|| {
            for t in vs.variables().values() {
                if t.dim() == 4 {
                    t.shallow_clone().set_data(&to_channels_last(t));
                }
            }
        });
    }

    /// Panics if a SyncBatchNorm collective fails; the trainer uses [`SeedNet::try_forward_t`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.try_forward_t(x, train)
            .expect("forward failed (a SyncBatchNorm collective)")
    }

    pub fn try_forward_t(&self, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let mut x = if self.channels_last {
            to_channels_last(x)
        } else {
            x.shallow_clone()
        };
        for stage in &self.stages {
            x = stage.bn.forward_t(&stage.conv.forward(&x), train)?;
            for block in &stage.blocks {
                x = block.forward_t(&x, train)?;
            }
        }
        // [B, C, 4, 4] -> [B, 16, C]: tokens in row-major (H, W) order.
        let mut x = x.flatten(2, 3).transpose(1, 2);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        // The seed's MaxPool2d(2, 2) on a 3-D tensor pools 2x2 windows of the (token, channel) matrix:
        // [B, 16, C] -> [B, 8, C/2] -> [B, 4C]. The same op, so a tie in a window sends the
        // gradient where PyTorch sends it (to the first maximum).
        let x = x
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
            .flatten(1, 2);
        Ok(self.fc.forward(&x))
    }
}

/// NCHW tensor with NHWC strides (tch 0.24 has no memory-format argument; this is the stride trick).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Number of trainable parameters.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}
