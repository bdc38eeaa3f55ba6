//! One epoch as named steps (`Trainer`): the plan, each step on the device, the tally the host reads
//! every [`CHECK_EVERY`] steps, evaluation, logging and the checkpoint commit.
use super::*;

/// Steps between the host's looks at the device's running loss and divergence flag: one blocking
/// read per this many steps, and one at the epoch's end.
pub const CHECK_EVERY: usize = 50;

/// What an epoch's steps leave on the device for the host to read every [`CHECK_EVERY`] steps.
pub(super) struct StepTally {
    /// 1.0 from the first step whose (global) loss was not finite: that step's update and every
    /// later one are skipped by the fused SGD kernel itself (its `found_inf`), so the weights stay
    /// those before it, as when the host stopped at once; the epoch ends at the next read.
    pub(super) halted: Tensor,
    /// Sum of loss x samples over the steps, in f64 (the host's arithmetic, done on the device).
    pub(super) loss_sum: Tensor,
    /// Steps taken while halted (their updates skipped), in f32 (exact up to 2^24 steps).
    pub(super) skipped: Tensor,
    /// Steps taken (the host counts them: no device op).
    pub(super) steps: u64,
}

impl StepTally {
    pub(super) fn new(device: Device) -> Self {
        StepTally {
            halted: Tensor::zeros([1], (Kind::Float, device)),
            loss_sum: Tensor::zeros([1], (Kind::Double, device)),
            skipped: Tensor::zeros([1], (Kind::Float, device)),
            steps: 0,
        }
    }

    /// One step's global mean loss `lv` (an f64 scalar on the device) and `weighted`, that loss
    /// times the step's global sample count: 7 device ops.
    pub(super) fn add(&mut self, lv: &Tensor, weighted: &Tensor) {
        let bad = lv.isfinite().logical_not().to_kind(Kind::Float);
        self.halted = self.halted.maximum(&bad);
        self.loss_sum = &self.loss_sum + weighted;
        self.skipped = &self.skipped + &self.halted;
        self.steps += 1;
    }

    /// (halted, loss sum, updates): one device-to-host copy, the step loop's only sync.
    pub(super) fn read(&self) -> Result<(bool, f64, u64)> {
        let t = Tensor::cat(
            &[
                self.halted.to_kind(Kind::Double),
                self.loss_sum.shallow_clone(),
                self.skipped.to_kind(Kind::Double),
            ],
            0,
        )
        .to_device(Device::Cpu);
        let v = Vec::<f64>::try_from(&t)?;
        Ok((v[0] != 0.0, v[1], self.steps - v[2] as u64))
    }
}

/// One epoch's training, before evaluation.
pub(super) struct EpochTrained {
    pub(super) started: Instant,
    pub(super) loss_sum: f64,
    pub(super) seen: usize,
    pub(super) diverged: bool,
    /// Training time alone (images/s are measured on it).
    pub(super) seconds: f64,
    pub(super) first_step_at: Option<i64>,
}

/// The epoch loop: what stays fixed across epochs, and the step counter's first use.
pub(super) struct Trainer<'a> {
    pub(super) cfg: &'a TrainConfig,
    pub(super) device: Device,
    pub(super) data: &'a data::Dataset,
    /// The splits on the training device, uploaded once as u8 where they fit (the host's otherwise).
    pub(super) train: Split,
    pub(super) test: Split,
    pub(super) augmenter: Augmenter,
    pub(super) sampler: Sampler,
    pub(super) ranks: &'a Ranks,
    pub(super) sync_bn: bool,
    pub(super) files: &'a RunFiles,
    pub(super) schedule: LrSchedule,
    pub(super) bar: Option<indicatif::ProgressBar>,
    pub(super) first_step_at: Option<i64>,
    /// The previous epoch's checkpoint being written (rank 0), off the training's critical path.
    pub(super) writing: Option<std::thread::JoinHandle<Result<()>>>,
}

impl<'a> Trainer<'a> {
    pub(super) fn new(
        cfg: &'a TrainConfig,
        device: Device,
        data: &'a data::Dataset,
        ranks: &'a Ranks,
        files: &'a RunFiles,
        schedule: LrSchedule,
    ) -> Self {
        Trainer {
            cfg,
            device,
            data,
            train: data.train.resident(device),
            test: data.test.resident(device),
            augmenter: Augmenter::new(device),
            sampler: Sampler::new(data.train.len(), ranks, cfg.batch_size as usize),
            ranks,
            sync_bn: ranks.world > 1 && !cfg.no_sync_bn,
            files,
            schedule,
            bar: None,
            first_step_at: None,
            writing: None,
        }
    }

    pub(super) fn progress_bar(&self) -> Option<indicatif::ProgressBar> {
        (self.ranks.is_main() && std::io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new(self.sampler.steps_per_epoch as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb
        })
    }

    /// Every remaining epoch: train, evaluate (and report), commit, and agree whether to stop.
    pub(super) fn epochs(
        &mut self,
        model: &mut Model,
        meta: &mut ResumeMeta,
        on_epoch: &mut dyn FnMut(&EpochMetrics),
    ) -> Result<Status> {
        let stop = stop_on_signals()?;
        let mut status = Status::Completed;
        for epoch in meta.epoch + 1..=self.cfg.epochs {
            let lr = self.settings_at(model, epoch);
            let trained = self.train_epoch(model, meta, epoch, lr)?;
            self.first_step_at = self.first_step_at.or(trained.first_step_at);
            let last = epoch == self.cfg.epochs;
            if trained.diverged || epoch % self.cfg.eval_interval == 0 || last {
                let m = self.evaluate_epoch(model, epoch, lr, &trained)?;
                if self.ranks.is_main() {
                    on_epoch(&m);
                }
                meta.history.push(m);
            }
            let line = meta.history.last().filter(|m| m.epoch == epoch);
            if trained.diverged {
                status = Status::Diverged;
                if self.ranks.is_main() {
                    self.wait_for_checkpoint()?; // or it would write the file back
                    let _ = std::fs::remove_file(&self.files.resume);
                    report_to_contract(line)?;
                }
                break;
            }
            meta.epoch = epoch;
            self.commit(model, meta)?;
            if self.ranks.is_main() && std::env::var_os(CONTRACT_METRICS).is_some() {
                // As a command job the line follows its checkpoint (the worker archives the
                // directory when it sees the line).
                self.wait_for_checkpoint()?;
                report_to_contract(meta.history.last().filter(|m| m.epoch == epoch))?;
            }
            if self.agree_to_stop(&stop)? && !last {
                tracing::info!(epoch, "stopping after a committed epoch (signal)");
                status = Status::Interrupted;
                break;
            }
        }
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        self.wait_for_checkpoint()?;
        Ok(status)
    }

    /// The lr of `epoch`, with the optimiser's momentum and weight decay set for it: the
    /// configuration's, or the last `--schedule` entry's at or before the epoch that sets each.
    fn settings_at(&self, model: &mut Model, epoch: u32) -> f64 {
        let at = self
            .cfg
            .schedule
            .as_ref()
            .map(|s| s.at(epoch))
            .unwrap_or_default();
        model.sgd.momentum = at.momentum.unwrap_or(self.cfg.momentum);
        model.sgd.weight_decay = at.weight_decay.unwrap_or(self.cfg.weight_decay);
        self.schedule
            .lr_with_base(epoch, at.lr.unwrap_or(self.schedule.base))
    }

    /// One pass over this rank's shard. A non-finite loss stops the weights at once (the update is
    /// skipped on the device) and ends the epoch diverged at the next read of the tally.
    pub(super) fn train_epoch(
        &self,
        model: &mut Model,
        meta: &mut ResumeMeta,
        epoch: u32,
        lr: f64,
    ) -> Result<EpochTrained> {
        let plan = self.epoch_plan(epoch);
        if let Some(pb) = &self.bar {
            pb.set_prefix(format!("{epoch}/{}", self.cfg.epochs));
            pb.reset();
        }
        let mut e = EpochTrained {
            started: Instant::now(),
            loss_sum: 0.0,
            seen: 0,
            diverged: false,
            seconds: 0.0,
            first_step_at: None,
        };
        let mut tally = StepTally::new(self.device);
        let (steps_before, last) = (meta.steps, plan.steps());
        for i in 0..last {
            self.step(model, &plan, i, lr, &mut tally)?;
            e.first_step_at.get_or_insert_with(unix_ms);
            // Every rank's shard has the same length, so every step's global batch is this.
            e.seen += plan.step_len(i) * self.ranks.world;
            if (i + 1) % CHECK_EVERY != 0 && i + 1 != last {
                continue;
            }
            let (halted, loss_sum, updates) = tally.read()?;
            meta.steps = steps_before + updates as i64;
            e.loss_sum = loss_sum;
            if halted {
                tracing::warn!(
                    epoch,
                    step = meta.steps,
                    "non-finite loss: the run diverged"
                );
                e.diverged = true;
                break;
            }
            if let Some(pb) = &self.bar {
                pb.set_position((i + 1) as u64);
                pb.set_message(format!(
                    "loss {:.4} lr {lr:.2e} {:.1} img/s",
                    e.loss_sum / e.seen as f64,
                    e.seen as f64 / e.started.elapsed().as_secs_f64()
                ));
            }
        }
        e.seconds = e.started.elapsed().as_secs_f64();
        Ok(e)
    }

    /// This rank's share of `epoch`'s order and augmentation, sent to the device in one go.
    pub(super) fn epoch_plan(&self, epoch: u32) -> DevicePlan {
        let plan = EpochPlan::new(self.cfg.seed, epoch, self.data.train.len());
        DevicePlan::new(
            &plan,
            &self.sampler.positions,
            self.sampler.batch,
            self.device,
        )
    }

    /// One optimiser step on step `i`'s batch of the epoch's plan, its global batch's mean loss
    /// added to `tally` on the device; when that loss (or an earlier one of the epoch) is not
    /// finite, the update is skipped there. No host sync, and no copy when the data are resident.
    pub(super) fn step(
        &self,
        model: &mut Model,
        plan: &DevicePlan,
        i: usize,
        lr: f64,
        tally: &mut StepTally,
    ) -> Result<()> {
        let kind = model.kind;
        let (x, labels) = self.augmenter.batch(&self.train, plan, i);
        let x = x.to_kind(kind);
        if let Some(pg) = self.ranks.pg() {
            // Without SyncBatchNorm each rank's running statistics drift apart; DDP then
            // broadcasts rank 0's buffers before every forward, and so do we.
            if !self.sync_bn && self.ranks.world > 1 {
                tch::no_grad(|| pg.broadcast(&model.buffers(), 0))?;
            }
            pg.prepare_step()?;
        }
        let logits = autocast(self.cfg.bf16, self.device, || {
            model.net.try_forward_t(&x, true)
        })??;
        // tch's cross_entropy_for_logits computes in fp32 whatever the input; this keeps `kind`.
        let loss = logits.to_kind(kind).cross_entropy_loss::<Tensor>(
            &labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        );
        // The global batch's mean loss (what one process with batch world x b would see), in f64
        // on the device: every rank gets the same value, so all skip a non-finite step together.
        // The count is filled on the device: no host-to-device copy in the step.
        let n = plan.step_len(i) as f64;
        let lv = loss.detach().to_kind(Kind::Double).view([1]);
        let (lv, weighted) = match self.ranks.pg() {
            None => (lv.shallow_clone(), lv * n),
            Some(pg) => {
                let n = Tensor::full([1], n, (Kind::Double, self.device));
                let t = Tensor::cat(&[&lv * &n, n], 0);
                pg.all_reduce_sum(&[&t])?;
                let n_all = t.narrow(0, 1, 1);
                let lv = t.narrow(0, 0, 1) / &n_all;
                let weighted = &lv * &n_all;
                (lv, weighted)
            }
        };
        tally.add(&lv, &weighted);
        Sgd::clear_grads(&model.trainable)?;
        // With a process group, the reducer all-reduces gradients bucket by bucket during this.
        loss.f_backward()
            .context("backward pass (with its gradient all-reduce) failed")?;
        model
            .sgd
            .step_unless(&model.trainable, lr, Some(&tally.halted))?;
        Ok(())
    }

    /// Synchronisation point 3: the test split, sharded across ranks and gathered. Rank 0 writes
    /// the epoch's line (and predictions) before it is reported.
    pub(super) fn evaluate_epoch(
        &self,
        model: &Model,
        epoch: u32,
        lr: f64,
        trained: &EpochTrained,
    ) -> Result<EpochMetrics> {
        let cfg = self.cfg;
        let ev = evaluate(
            &model.net,
            &self.test,
            self.device,
            cfg.eval_batch_size as usize,
            cfg.bf16,
            model.kind,
            self.ranks.pg(),
        )?;
        let s = ev.confusion.scores();
        let diverged = trained.diverged;
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: if diverged {
                f64::NAN
            } else {
                trained.loss_sum / trained.seen.max(1) as f64
            },
            test_loss: if diverged { f64::NAN } else { ev.loss },
            accuracy: s.accuracy,
            precision: s.precision,
            recall: s.recall,
            f1: s.f1,
            images_per_sec: trained.seen as f64 / trained.seconds,
            // The whole epoch, evaluation included.
            seconds: trained.started.elapsed().as_secs_f64(),
        };
        if self.ranks.is_main() {
            if cfg.save_predictions {
                let path = self.files.out.join(PREDICTIONS_FILE);
                write_predictions(&self.data.test, &ev.predictions, &path)?;
            }
            append_metrics(&m, &self.files.metrics)?;
            self.log_epoch(&m);
        }
        Ok(m)
    }

    pub(super) fn log_epoch(&self, m: &EpochMetrics) {
        match &self.bar {
            Some(pb) => pb.println(format!(
                "epoch {}: train loss {:.4}, test loss {:.4}, accuracy {:.2}%, lr {:.2e}, {:.1} img/s",
                m.epoch,
                m.train_loss,
                m.test_loss,
                100.0 * m.accuracy,
                m.lr,
                m.images_per_sec
            )),
            None => tracing::info!(
                epoch = m.epoch,
                train_loss = m.train_loss,
                test_loss = m.test_loss,
                accuracy = m.accuracy,
                lr = m.lr,
                images_per_sec = m.images_per_sec,
                "epoch done"
            ),
        }
    }

    /// The epoch's commit: rank 0 copies the weights, momentum and metadata off the model and a
    /// thread writes them (the weights, then the resume state: the commit point) while the next
    /// epoch trains. One write at a time, in epoch order; the run waits for the last one.
    pub(super) fn commit(&mut self, model: &Model, meta: &ResumeMeta) -> Result<()> {
        if !self.ranks.is_main() {
            return Ok(());
        }
        self.wait_for_checkpoint()?;
        let snapshot = checkpoint::Snapshot::take(&model.params, &model.sgd.buffers, meta)?;
        let (weights, resume) = (self.files.out.join(WEIGHTS_FILE), self.files.resume.clone());
        self.writing = Some(std::thread::spawn(move || {
            snapshot.write(&weights, &resume)
        }));
        Ok(())
    }

    pub(super) fn wait_for_checkpoint(&mut self) -> Result<()> {
        match self.writing.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?
                .context("writing the epoch's checkpoint"),
            None => Ok(()),
        }
    }

    /// Synchronisation point 4: ranks stop together; a signal seen by any of them stops all after
    /// this committed epoch.
    pub(super) fn agree_to_stop(&self, stop: &AtomicBool) -> Result<bool> {
        let mut stopping = stop.load(Ordering::SeqCst);
        if let Some(pg) = self.ranks.pg() {
            let t = Tensor::from_slice(&[stopping as i64]);
            pg.all_reduce_sum(&[&t])?;
            stopping = t.int64_value(&[0]) > 0;
        }
        Ok(stopping)
    }
}
