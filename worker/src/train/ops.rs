//! ATen ops of one trainer step, for `worker bench --ops`.
use super::*;

/// The ATen ops of one step of this trainer (the batch gathered from the split, augmented, forward,
/// the loss read back, backward, SGD) at `cfg`'s batch size on its data, after two warm-up steps
/// (momentum buffers exist, as in a long run). `worker bench --ops` reports it beside PyTorch's.
pub fn count_step_ops(cfg: &TrainConfig) -> Result<crate::shim::OpCount> {
    let device = parse_device(&cfg.device)?;
    let ranks = Ranks {
        rank: 0,
        world: 1,
        local_rank: 0,
        pg: None,
    };
    let data = data::load(cfg)?;
    let mut model = Model::build(cfg, device)?;
    let files = RunFiles::create(&std::env::temp_dir(), false)?;
    let schedule = LrSchedule {
        base: cfg.lr,
        warmup_epochs: 0,
        warmup_factor: 1.0,
        milestones: vec![],
        gamma: 1.0,
    };
    let trainer = Trainer::new(cfg, device, &data, &ranks, &files, schedule);
    let plan = trainer.epoch_plan(1);
    anyhow::ensure!(plan.steps() >= 3, "three batches of data are needed");
    let mut tally = StepTally::new(device);
    for i in 0..2 {
        trainer.step(&mut model, &plan, i, cfg.lr, &mut tally)?;
    }
    let (step, count) =
        crate::shim::count_ops(|| trainer.step(&mut model, &plan, 2, cfg.lr, &mut tally))?;
    step?;
    Ok(count)
}
