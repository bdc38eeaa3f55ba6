//! The learning-rate staircase and SGD written on tensors.
//!
//! tch's `nn::Sgd` wraps the C++ optimiser and exposes no state, so its momentum buffers could not be
//! saved for an exact resume. This is PyTorch's `torch.optim.SGD` step (dampening 0, no Nesterov,
//! weight decay folded into the gradient) through PyTorch's own fused kernel, with its buffers in
//! the open.
use tch::Tensor;

/// Per-epoch learning rate, as the seed's scheduler stepped it once per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub warmup_epochs: u32,
    pub warmup_factor: f64,
    pub milestones: Vec<u32>,
    pub gamma: f64,
}

impl LrSchedule {
    /// The lr of 1-based `epoch`. Warm-up is linear from `warmup_factor` to 1 over `warmup_epochs`
    /// (with the study's 1 epoch that means epoch 1 runs at lr x 0.01); after each milestone m, epochs
    /// m+1 onwards are multiplied by gamma once more.
    pub fn lr_at(&self, epoch: u32) -> f64 {
        self.lr_with_base(epoch, self.base)
    }

    /// The lr of `epoch` had the schedule started from `base` (a `--schedule` entry's lr, or a
    /// resume with a new lr: the same expression either way, so both give the same bits).
    pub fn lr_with_base(&self, epoch: u32, base: f64) -> f64 {
        let e = epoch.saturating_sub(1);
        let warm = if e < self.warmup_epochs {
            let alpha = e as f64 / self.warmup_epochs as f64;
            self.warmup_factor * (1.0 - alpha) + alpha
        } else {
            1.0
        };
        let decays = self.milestones.iter().filter(|&&m| epoch > m).count() as i32;
        base * warm * self.gamma.powi(decays)
    }
}

/// SGD with momentum and weight decay over a fixed list of parameters.
#[derive(Debug)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// One buffer per parameter, created on the first step as PyTorch does (`buf = grad` then).
    pub buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(n_params: usize, momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            weight_decay,
            buffers: (0..n_params).map(|_| None).collect(),
        }
    }

    /// `d = g + wd * p; buf = momentum * buf + d; p -= lr * buf` (on the first step `buf = d`), in
    /// one multi-tensor kernel: PyTorch's own `_fused_sgd_`, the step torch.optim.SGD runs with
    /// `fused=True`. Parameters without a gradient are left alone, as PyTorch leaves them.
    pub fn step(&mut self, params: &[Tensor], lr: f64) -> anyhow::Result<()> {
        self.step_unless(params, lr, None)
    }

    /// [`Self::step`], skipped on the device when `found_inf` (a one-element f32 tensor) holds 1:
    /// parameters and momentum buffers are then left as they are, with no host sync to decide it.
    pub fn step_unless(
        &mut self,
        params: &[Tensor],
        lr: f64,
        found_inf: Option<&Tensor>,
    ) -> anyhow::Result<()> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        let live: Vec<usize> = (0..params.len()).filter(|&i| grads[i].defined()).collect();
        if live.is_empty() {
            return Ok(());
        }
        // Buffers are created on the first step, as PyTorch creates them (the kernel sets each to
        // its gradient then); a resumed run brings its own.
        let first = live.iter().all(|&i| self.buffers[i].is_none());
        let with_momentum = self.momentum != 0.0;
        if with_momentum {
            for &i in &live {
                self.buffers[i].get_or_insert_with(|| params[i].detach().zeros_like());
            }
        }
        let p: Vec<&Tensor> = live.iter().map(|&i| &params[i]).collect();
        let g: Vec<&Tensor> = live.iter().map(|&i| &grads[i]).collect();
        let b: Vec<&Tensor> = if with_momentum {
            live.iter()
                .filter_map(|&i| self.buffers[i].as_ref())
                .collect()
        } else {
            vec![]
        };
        crate::shim::fused_sgd(
            &p,
            &g,
            &b,
            self.weight_decay,
            self.momentum,
            lr,
            first,
            found_inf,
        )
    }

    /// Gradients set to None, as PyTorch's `zero_grad()` does by default: the next backward writes
    /// each gradient instead of adding it to zeros.
    pub fn clear_grads(params: &[Tensor]) -> anyhow::Result<()> {
        crate::shim::set_grads_none(params)
    }
}
