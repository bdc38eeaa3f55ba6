//! The optimiser step equals PyTorch's: 100 steps of our SGD (PyTorch's fused kernel through the
//! shim, gradients set to None between steps) against `torch.optim.SGD(foreach=True)` from `.venv`,
//! on the same parameters and the same loss, to 1e-6 relative in fp32 on the CPU.
mod common;

use tch::{Kind, Tensor};
use worker::optim::Sgd;

const STEPS: usize = 100;

/// sum(sin(p) * k) over the tensors, with k a fixed ramp per tensor: every gradient differs and
/// changes every step.
fn loss(params: &[Tensor]) -> Tensor {
    params
        .iter()
        .map(|p| (p.sin() * ramp(p)).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .unwrap()
}

fn ramp(p: &Tensor) -> Tensor {
    Tensor::arange(p.numel() as i64, (Kind::Float, p.device())).reshape(p.size()) * 0.01 + 1.0
}

const TORCH: &str = r#"
import sys, torch
from safetensors.torch import load_file, save_file
momentum, wd = float(sys.argv[3]), float(sys.argv[4])
ps = load_file(sys.argv[1]); names = sorted(ps)
params = [torch.nn.Parameter(ps[n].clone()) for n in names]
ramp = lambda p: torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) * 0.01 + 1.0
opt = torch.optim.SGD(params, lr=0.05, momentum=momentum, weight_decay=wd, foreach=True)
for _ in range(100):
    opt.zero_grad(set_to_none=True)
    sum((torch.sin(p) * ramp(p)).sum() for p in params).backward()
    opt.step()
save_file({n: p.detach() for n, p in zip(names, params)}, sys.argv[2])
"#;

fn compare_with_torch(momentum: f64, weight_decay: f64) {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(7);
    let shapes: [&[i64]; 4] = [&[16, 3, 3, 3], &[16], &[10, 64], &[7]];
    let start: Vec<(String, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                format!("p{i}"),
                Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)),
            )
        })
        .collect();
    let init = dir.path().join("init.safetensors");
    Tensor::write_safetensors(&start, &init).unwrap();

    let params: Vec<Tensor> = start
        .iter()
        .map(|(_, t)| t.copy().set_requires_grad(true))
        .collect();
    let mut sgd = Sgd::new(params.len(), momentum, weight_decay);
    for _ in 0..STEPS {
        Sgd::clear_grads(&params).unwrap();
        loss(&params).backward();
        sgd.step(&params, 0.05).unwrap();
    }

    let theirs = dir.path().join("torch.safetensors");
    let (m, wd) = (momentum.to_string(), weight_decay.to_string());
    common::python(
        TORCH,
        &[
            init.as_os_str(),
            theirs.as_os_str(),
            m.as_ref(),
            wd.as_ref(),
        ],
    );
    let theirs: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&theirs)
        .unwrap()
        .into_iter()
        .collect();
    for ((name, _), got) in start.iter().zip(&params) {
        let want = &theirs[name];
        let diff = (got.detach() - want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]).max(1e-6);
        assert!(
            diff / scale <= 1e-6,
            "{name} (momentum {momentum}, wd {weight_decay}): {diff} apart at scale {scale}"
        );
    }
    // The parameters moved: the comparison is not of two untouched copies.
    let moved = (&params[0].detach() - &start[0].1)
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 0.1, "{moved}");
}

#[test]
fn a_hundred_steps_equal_torch_optim_sgd_foreach() {
    compare_with_torch(0.9, 1e-4);
}

#[test]
fn without_momentum_or_weight_decay_too() {
    compare_with_torch(0.0, 0.0);
}

/// The divergence guard of the train step: with `found_inf` holding 1 the kernel changes neither
/// the parameters nor the momentum buffers; with 0 it steps exactly as without it.
#[test]
fn a_flagged_step_changes_nothing_and_an_unflagged_one_is_a_plain_step() {
    tch::manual_seed(3);
    let start = Tensor::randn([8, 4], (Kind::Float, tch::Device::Cpu));
    let run = |flags: &[f32]| {
        let p = vec![start.copy().set_requires_grad(true)];
        let mut sgd = Sgd::new(1, 0.9, 1e-4);
        for &f in flags {
            Sgd::clear_grads(&p).unwrap();
            loss(&p).backward();
            let flag = Tensor::from_slice(&[f]);
            sgd.step_unless(&p, 0.05, Some(&flag)).unwrap();
        }
        (p[0].detach(), sgd.buffers[0].as_ref().map(Tensor::copy))
    };
    let (plain, plain_buf) = {
        let p = vec![start.copy().set_requires_grad(true)];
        let mut sgd = Sgd::new(1, 0.9, 1e-4);
        for _ in 0..2 {
            Sgd::clear_grads(&p).unwrap();
            loss(&p).backward();
            sgd.step(&p, 0.05).unwrap();
        }
        (p[0].detach(), sgd.buffers[0].as_ref().map(Tensor::copy))
    };
    let (unflagged, buf) = run(&[0.0, 0.0]);
    assert!(unflagged.equal(&plain) && buf.unwrap().equal(&plain_buf.unwrap()));
    let (after_one, buf_one) = run(&[0.0]);
    let (flagged, buf_flagged) = run(&[0.0, 1.0, 1.0]);
    assert!(
        flagged.equal(&after_one),
        "the flagged steps moved the parameters"
    );
    assert!(
        buf_flagged.unwrap().equal(&buf_one.unwrap()),
        "or the momentum"
    );
    assert!(!flagged.equal(&start));
}
