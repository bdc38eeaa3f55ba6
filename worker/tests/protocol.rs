//! The coordinator accepts exactly the options `worker train` has, with the same defaults it
//! schedules by.
use std::collections::BTreeSet;
use worker::config::TrainConfig;

#[test]
fn sweep_keys_are_the_train_options() {
    let ours: BTreeSet<String> = serde_json::to_value(TrainConfig::default())
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    // Every trainer option is either a sweep key or a worker's own setting (where data comes from).
    let theirs: BTreeSet<String> = server::sweep::TRAIN_KEYS
        .iter()
        .map(|(k, _)| k.to_string())
        .chain(
            server::sweep::WORKER_SETTINGS
                .iter()
                .map(|(k, _)| k.to_string()),
        )
        .collect();
    assert_eq!(ours, theirs);
    let d = TrainConfig::default();
    assert_eq!(d.epochs as i64, server::sweep::DEFAULT_EPOCHS);
    assert_eq!(d.batch_size as i64, server::sweep::DEFAULT_BATCH_SIZE);
    assert_eq!(d.nproc_per_node as i64, server::sweep::DEFAULT_NPROC);
}

#[test]
fn every_job_of_the_repository_sweeps_is_a_valid_train_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
    for file in [
        "cifar10-bs-lr.toml",
        "cifar10-bs-lr-gamma05.toml",
        "cifar10-lr-random.toml",
        "demo-cpu.toml",
    ] {
        let spec =
            server::sweep::SweepSpec::from_toml(&std::fs::read_to_string(dir.join(file)).unwrap())
                .unwrap();
        for params in spec.expand() {
            let cfg: TrainConfig =
                serde_json::from_value(serde_json::Value::Object(params.clone())).unwrap();
            cfg.validate()
                .unwrap_or_else(|e| panic!("{file}: {params:?}: {e}"));
        }
    }
}
