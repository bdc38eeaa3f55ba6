//! The network's size and names, and checkpoints in the study's PyTorch format.
mod common;

use std::collections::BTreeMap;
use tch::{nn, Device, Kind};
use worker::checkpoint::{self, Params};
use worker::model::{parameter_count, ModelConfig, SeedNet};

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Int64 => "int64",
        _ => "other",
    }
}

#[test]
fn full_model_has_the_study_parameter_count_and_state_dict() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = SeedNet::new(&vs.root(), &ModelConfig::default());
    assert_eq!(parameter_count(&vs), 15_553_098);

    let expected =
        std::fs::read_to_string(common::shared_dir().join("seed-state-dict.txt")).unwrap();
    let expected: Vec<String> = expected
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(expected.len(), 254);
    let ours: BTreeMap<String, String> = checkpoint::study_state_dict(&Params::of(&vs), 0)
        .into_iter()
        .map(|(n, t)| {
            let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
            let shape = match shape.len() {
                0 => "()".to_string(),
                1 => format!("({},)", shape[0]),
                _ => format!("({})", shape.join(", ")),
            };
            (n.clone(), format!("{n} {shape} {}", kind_name(t.kind())))
        })
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    let ours_sorted: Vec<String> = ours.values().cloned().collect();
    assert_eq!(ours_sorted, expected_sorted);
}

#[test]
fn init_follows_pytorch_defaults() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = SeedNet::new(&vs.root(), &ModelConfig::default());
    let v = vs.variables();
    // BN weight 1, bias 0 (tch's default weight would be U(0, 1)).
    assert_eq!(v["conv.1.weight"].min().double_value(&[]), 1.0);
    assert_eq!(v["conv.1.bias"].abs().max().double_value(&[]), 0.0);
    // Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; fc has fan_in 2048.
    let bound = 1.0 / 2048f64.sqrt();
    assert!(v["fc.weight"].abs().max().double_value(&[]) <= bound);
    assert!(v["fc.bias"].abs().max().double_value(&[]) <= bound);
    // Kaiming normal, fan_out, ReLU gain: conv 3x3 512->512 std = sqrt(2 / (512 * 9)).
    let std = v["conv.14.conv.3.weight"].std(true).double_value(&[]);
    let want = (2.0 / (512.0 * 9.0f64)).sqrt();
    assert!((std - want).abs() / want < 0.02, "std {std} vs {want}");
}

/// Our checkpoint loads into the seed's own PyTorch code (strict), and PyTorch's weights load into ours.
#[test]
fn pytorch_checkpoint_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ours_path = dir.path().join("ours.safetensors");
    let theirs_path = dir.path().join("theirs.safetensors");

    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig::tiny();
    let _net = SeedNet::new(&vs.root(), &cfg);
    let params = Params::of(&vs);
    checkpoint::save_weights(&params, 42, &ours_path).unwrap();

    // PyTorch: load ours strictly, check a few values and num_batches_tracked, then write its own
    // weights (ours + 1, a fresh counter) for the way back.
    let script = r#"
import sys, torch
sys.path.insert(0, sys.argv[1])
from seednet import SeedNet
from safetensors.torch import load_file, save_file
m = SeedNet(widths=(8, 16, 32, 64), depth=1, heads=2)
sd = load_file(sys.argv[2])
m.load_state_dict(sd, strict=True)
assert int(m.state_dict()["conv.1.num_batches_tracked"]) == 42
assert torch.equal(m.state_dict()["fc.weight"], sd["fc.weight"])
out = {k: (v + 1 if v.is_floating_point() else v + 1) for k, v in m.state_dict().items()}
save_file(out, sys.argv[3])
print("ok", len(out))
"#;
    let reference = common::shared_dir().join("reference");
    let out = common::python(script, &[&reference, &ours_path, &theirs_path]);
    assert!(out.starts_with("ok"));

    let before: BTreeMap<String, tch::Tensor> = params
        .all
        .iter()
        .map(|(n, t)| (n.clone(), t.copy()))
        .collect();
    let steps = checkpoint::load_weights(&params, &theirs_path).unwrap();
    assert_eq!(steps, 43);
    for (name, t) in &params.all {
        let diff = (t - (&before[name] + 1.0)).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name} did not round-trip");
    }
}

#[test]
fn a_checkpoint_of_another_configuration_is_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = SeedNet::new(&vs.root(), &ModelConfig::tiny());
    checkpoint::save_weights(&Params::of(&vs), 0, &path).unwrap();

    let other = nn::VarStore::new(Device::Cpu);
    let _net = SeedNet::new(
        &other.root(),
        &ModelConfig {
            widths: vec![8, 16, 32, 32],
            ..ModelConfig::tiny()
        },
    );
    let err = checkpoint::load_weights(&Params::of(&other), &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv.12.weight") || err.contains("expects"),
        "{err}"
    );
}

/// One training step of our network equals the study's PyTorch class on the same weights and
/// batch, in fp64: logits, loss, every gradient and the BatchNorm running statistics after the
/// step's forward. Both sides call the same libtorch, so what this checks is the network: the ops,
/// their order, which gradient each op routes where (the pooling's, the attention's split of qkv).
#[test]
fn a_training_step_equals_pytorch_on_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, ours) = (
        dir.path().join("w.safetensors"),
        dir.path().join("ours.safetensors"),
    );

    tch::manual_seed(3);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = SeedNet::new(&vs.root(), &ModelConfig::tiny());
    checkpoint::save_weights(&Params::of(&vs), 0, &weights).unwrap();
    vs.double(); // the saved f32 values, exactly, in f64 (PyTorch does the same after loading)
    let x = tch::Tensor::randn([6, 3, 32, 32], (Kind::Double, Device::Cpu));
    let y = tch::Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9]);
    let logits = net.forward_t(&x, true);
    let loss = logits.cross_entropy_loss::<tch::Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
    loss.backward();
    let mut out: Vec<(String, tch::Tensor)> = vec![
        ("x".into(), x),
        ("y".into(), y),
        ("logits".into(), logits.detach()),
        ("loss".into(), loss.detach()),
    ];
    for (name, t) in vs.variables() {
        let grad = t.grad();
        if grad.defined() {
            out.push((format!("grad.{name}"), grad));
        } else {
            out.push((format!("value.{name}"), t.detach())); // running statistics
        }
    }
    tch::Tensor::write_safetensors(&out, &ours).unwrap();

    let script = r#"
import sys, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
from seednet import SeedNet
from safetensors.torch import load_file
m = SeedNet(widths=(8, 16, 32, 64), depth=1, heads=2)
m.load_state_dict(load_file(sys.argv[2]), strict=True)
m.double().train()
ours = load_file(sys.argv[3])
logits = m(ours["x"])
loss = F.cross_entropy(logits, ours["y"])
loss.backward()
theirs = {"logits": logits.detach(), "loss": loss.detach()}
for k, p in m.named_parameters():
    theirs["grad." + k] = p.grad
for k, b in m.named_buffers():
    if b.is_floating_point():
        theirs["value." + k] = b
worst, compared = 0.0, 0
for k, t in theirs.items():
    o = ours[k]
    assert o.shape == t.shape, (k, o.shape, t.shape)
    rel = ((o - t).abs().max() / t.abs().max().clamp_min(1e-12)).item()
    worst, compared = max(worst, rel), compared + 1
print(f"compared {compared} worst {worst:.3e}")
"#;
    let reference = common::shared_dir().join("reference");
    let stdout = common::python(script, &[&reference, &weights, &ours]);
    println!("{}", stdout.trim());
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    let (compared, worst): (usize, f64) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    // Logits, loss, every parameter's gradient, every BatchNorm's running mean and variance.
    assert!(compared > 100, "{stdout}");
    // fp64 on both sides: any real difference in the network is far above this.
    assert!(worst < 1e-9, "{stdout}");
}
