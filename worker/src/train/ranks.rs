//! Data-parallel agreement: this process's place (`Ranks`), joining the group, agreeing on how the run
//! starts, DDP's start, the DistributedSampler's positions, and the replicas' final spread.
use super::*;

/// This process's place in a data-parallel run; a plain run is rank 0 of 1 with no group.
pub(super) struct Ranks {
    pub(super) rank: usize,
    pub(super) world: usize,
    pub(super) local_rank: usize,
    pub(super) pg: Option<Rc<ProcessGroup>>,
}

impl Ranks {
    pub(super) fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub(super) fn pg(&self) -> Option<&ProcessGroup> {
        self.pg.as_deref()
    }
}

/// Under torchrun's environment, joins the process group; otherwise rank 0 of 1.
pub(super) fn join_group(
    cfg: &TrainConfig,
    env: Option<&RankEnv>,
    device: Device,
) -> Result<(Ranks, Option<ProcessGroup>)> {
    let mut ranks = Ranks {
        rank: 0,
        world: 1,
        local_rank: 0,
        pg: None,
    };
    let Some(e) = env else {
        return Ok((ranks, None));
    };
    let backend = Backend::choose(cfg.dist_backend.as_deref(), device)?;
    let g = ProcessGroup::from_env(e, backend, Duration::from_secs(cfg.dist_timeout), device)?;
    tracing::info!(
        rank = e.rank,
        world = e.world,
        ?backend,
        "joined the process group"
    );
    ranks.rank = e.rank;
    ranks.world = e.world;
    ranks.local_rank = e.local_rank;
    Ok((ranks, Some(g)))
}

/// Rank 0 reads `out` (a fresh run, a resume, a finished run, or a refusal) and tells the others,
/// with the epoch and step counts to continue from.
pub(super) fn agree_on_start(
    files: &RunFiles,
    model: &mut Model,
    meta: &mut ResumeMeta,
    group: Option<&ProcessGroup>,
    main: bool,
) -> Result<Start> {
    let found = if main {
        inspect_out(files, model, meta)
    } else {
        Ok(Start::Fresh)
    };
    let code = found.as_ref().map_or(Start::REFUSED, Start::code);
    let told = Tensor::from_slice(&[code, meta.epoch as i64, meta.steps]);
    if let Some(g) = group {
        g.broadcast(&[&told], 0)?;
    }
    let told: Vec<i64> = Vec::try_from(&told)?;
    let found = found?;
    meta.epoch = told[1] as u32;
    meta.steps = told[2];
    Ok(match (told[0], found) {
        (Start::REFUSED, _) => bail!("rank 0 refused {}", files.out.display()),
        (2, Start::Finished(done)) => Start::Finished(done),
        (2, _) => Start::Finished(None),
        (1, _) => Start::Resumed,
        _ => Start::Fresh,
    })
}

/// DDP's start: every rank takes rank 0's parameters and buffers (after a resume, also its
/// momentum), whatever its own init or files were; then gradients are averaged from here on.
pub(super) fn start_data_parallel(
    g: &mut ProcessGroup,
    model: &mut Model,
    resumed: bool,
) -> Result<()> {
    let all: Vec<&Tensor> = model.params.all.iter().map(|(_, t)| t).collect();
    tch::no_grad(|| g.broadcast(&all, 0))?;
    if resumed {
        for (slot, p) in model.sgd.buffers.iter_mut().zip(&model.trainable) {
            slot.get_or_insert_with(|| p.detach().zeros_like());
        }
        let bufs: Vec<&Tensor> = model.sgd.buffers.iter().flatten().collect();
        g.broadcast(&bufs, 0)?;
    }
    g.sync_gradients(&model.trainable, 25)
}

/// DistributedSampler: the epoch's order padded (by wrapping) to a multiple of the world size,
/// rank r taking positions r, r + world, ... ; one process takes them all.
pub(super) struct Sampler {
    pub(super) positions: Vec<usize>,
    pub(super) batch: usize,
    pub(super) steps_per_epoch: usize,
}

impl Sampler {
    pub(super) fn new(n_train: usize, ranks: &Ranks, batch: usize) -> Self {
        let per_rank = n_train.div_ceil(ranks.world);
        let positions = (ranks.rank..per_rank * ranks.world)
            .step_by(ranks.world)
            .map(|p| p % n_train)
            .collect();
        Sampler {
            positions,
            batch,
            steps_per_epoch: per_rank.div_ceil(batch),
        }
    }
}

pub(super) fn barrier(g: Option<&ProcessGroup>) -> Result<()> {
    g.map_or(Ok(()), ProcessGroup::barrier)
}

/// The largest difference between this rank's parameters and buffers and rank 0's, over all
/// ranks: 0 when data parallelism kept the replicas identical, as it must.
pub(super) fn param_spread(pg: &ProcessGroup, params: &Params) -> Result<f64> {
    let flat = Tensor::cat(
        &params
            .all
            .iter()
            .map(|(_, t)| t.detach().to_kind(Kind::Double).flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    let theirs = flat.copy();
    pg.broadcast(&[&theirs], 0)?;
    let mine = (&flat - &theirs).abs().max().to_device(Device::Cpu);
    let all = pg.all_gather(&mine.reshape([1]))?;
    Ok(all.max().double_value(&[]))
}
