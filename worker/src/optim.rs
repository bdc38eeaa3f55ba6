//! The learning-rate staircase and SGD written on tensors.
//!
//! tch's `nn::Sgd` wraps the C++ optimiser and exposes no state, so its momentum buffers could not be
//! saved for an exact resume. This is PyTorch's `torch.optim.SGD` step (dampening 0, no Nesterov,
//! weight decay folded into the gradient) on plain tensors, with its buffers in the open.
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
        let e = epoch.saturating_sub(1);
        let warm = if e < self.warmup_epochs {
            let alpha = e as f64 / self.warmup_epochs as f64;
            self.warmup_factor * (1.0 - alpha) + alpha
        } else {
            1.0
        };
        let decays = self.milestones.iter().filter(|&&m| epoch > m).count() as i32;
        self.base * warm * self.gamma.powi(decays)
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

    /// `d = g + wd * p; buf = momentum * buf + d; p -= lr * buf`, all in place.
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        tch::no_grad(|| {
            for (p, slot) in params.iter().zip(self.buffers.iter_mut()) {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                if self.weight_decay != 0.0 {
                    // In place on the gradient, which is zeroed before the next backward anyway.
                    let _ = g.g_add_(&(p * self.weight_decay));
                }
                let buf = match slot {
                    Some(buf) => {
                        let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                        buf
                    }
                    None => slot.insert(g.detach().copy()),
                };
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(&*buf * lr));
            }
        });
    }

    pub fn zero_grad(params: &[Tensor]) {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }
}
