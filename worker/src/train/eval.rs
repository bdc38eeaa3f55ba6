//! Evaluation of the whole test split, sharded over the ranks of a data-parallel run and gathered, and
//! the bf16 autocast both evaluation and training use.
use super::*;

/// Result of evaluating the whole test split.
#[derive(Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub confusion: Confusion,
    pub predictions: Vec<i64>,
}

/// Evaluates the whole test split. With a process group, rank r takes batches r, r + world, ...
/// (the very batches one process would see, so each sample's logits are computed the same way),
/// and the per-sample predictions and the loss sum are gathered: every rank gets exactly the
/// single-process metrics.
pub fn evaluate(
    model: &SeedNet,
    split: &Split,
    device: Device,
    batch: usize,
    bf16: bool,
    input_kind: Kind,
    pg: Option<&ProcessGroup>,
) -> Result<Evaluation> {
    let n = split.len();
    let (rank, world) = pg.map_or((0, 1), |g| (g.rank(), g.world()));
    let aug = Augmenter::new(device);
    let mut predictions = vec![0i64; n];
    let starts: Vec<usize> = (0..n).step_by(batch).skip(rank).step_by(world).collect();
    let (mut preds, mut sums) = (vec![], vec![]);
    tch::no_grad(|| -> Result<()> {
        for &start in &starts {
            let len = batch.min(n - start) as i64;
            let images = split.images.narrow(0, start as i64, len);
            let x = aug
                .normalize_u8(&images.to_device(device))
                .to_kind(input_kind);
            let y = split.labels.narrow(0, start as i64, len).to_device(device);
            let logits =
                autocast(bf16, device, || model.try_forward_t(&x, false))??.to_kind(input_kind);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0);
            sums.push(loss.to_kind(Kind::Double).view([1]));
            preds.push(logits.argmax(-1, false));
        }
        Ok(())
    })?;
    // One read back for the whole pass: the batches' results stayed on the device. The sums are
    // added on the host in batch order, in f64, as before.
    let mut loss_sum = 0.0;
    if !starts.is_empty() {
        let sums = Vec::<f64>::try_from(&Tensor::cat(&sums, 0).to_device(Device::Cpu))?;
        let all = Vec::<i64>::try_from(&Tensor::cat(&preds, 0).to_device(Device::Cpu))?;
        let mut at = 0;
        for (&start, sum) in starts.iter().zip(sums) {
            let len = batch.min(n - start);
            predictions[start..start + len].copy_from_slice(&all[at..at + len]);
            loss_sum += sum;
            at += len;
        }
    }
    if let Some(g) = pg {
        // Each index was written by one rank and is 0 elsewhere: a sum gathers them.
        let preds = Tensor::from_slice(&predictions);
        let loss = Tensor::from_slice(&[loss_sum]);
        g.all_reduce_sum(&[&preds])?;
        g.all_reduce_sum(&[&loss])?;
        predictions = Vec::try_from(&preds)?;
        loss_sum = loss.double_value(&[0]);
    }
    let truth: Vec<i64> = Vec::try_from(&split.labels.to_device(Device::Cpu))?;
    let mut confusion = Confusion::new(10);
    confusion.add(&truth, &predictions);
    Ok(Evaluation {
        loss: loss_sum / n as f64,
        confusion,
        predictions,
    })
}

/// Runs `f` under bf16 autocast on `device` when `bf16` (the trainer's and the benchmark's).
pub(crate) fn autocast<T>(bf16: bool, device: Device, f: impl FnOnce() -> T) -> Result<T> {
    if !bf16 {
        return Ok(f());
    }
    crate::shim::set_autocast_bf16(true, device)?;
    let out = f();
    crate::shim::set_autocast_bf16(false, device)?;
    Ok(out)
}
