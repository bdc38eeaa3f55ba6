//! What the program writes, read as it is written: its output, the lines of its metrics file
//! and its checkpoints, each queued for the coordinator in the order it was produced.
use super::Supervisor;
use crate::service::outbox::Write;
use crate::service::output::Output;
use crate::service::program::{self, Program};
use crate::train::METRICS_FILE;
use std::io::{Read, Seek, SeekFrom};
use std::time::SystemTime;

/// Largest log chunk sent at once.
const LOG_CHUNK: usize = 64 << 10;
/// Most bytes of the metrics file read in one poll, and the longest line taken as metrics.
const METRICS_READ: usize = 1 << 20;
const MAX_METRICS_LINE: usize = 64 << 10;

/// How far the program's files and output have been read.
#[derive(Debug, Default)]
pub(super) struct Reading {
    pub output: Output,
    metrics_offset: u64,
    /// The metrics line being read is too long and is skipped to its end.
    metrics_overlong: bool,
    /// The last epoch of the checkpoint this attempt resumed from: the program may write those
    /// epochs again, but they were computed (and reported) by an earlier attempt.
    pub restored_epoch: i64,
    resume_seen: Option<(SystemTime, u64)>,
}

impl Supervisor {
    /// New output, new metric lines and a new checkpoint, queued in the order they were written.
    /// A gang member other than node 0 sends none of them (node 0 reports for the gang); its
    /// output is read and only its tail kept, for the error of a failure.
    pub(super) fn collect(&mut self) {
        if self.claim.is_gang_member() {
            let _ = self.read.output.take(usize::MAX);
            return;
        }
        let last_new_epoch = self.collect_metrics();
        // After the metrics: a note about a skipped metrics line goes out in this same pass, even
        // when it is the job's last.
        self.collect_output();
        self.collect_checkpoint(last_new_epoch);
    }

    fn collect_output(&mut self) {
        for (offset, data) in self.read.output.take(LOG_CHUNK) {
            let dropped = self.outbox.push(Write::Log {
                offset,
                gap: 0,
                data,
            });
            if dropped > 0 {
                tracing::warn!(
                    job = self.job(),
                    bytes = dropped,
                    "coordinator unreachable for long: dropping old output"
                );
            }
        }
    }

    /// Forwards whole new lines of metrics.jsonl; the last new epoch forwarded. Read as bytes, at
    /// most [`METRICS_READ`] a poll: a line that is not UTF-8 JSON with an epoch, or longer than
    /// [`MAX_METRICS_LINE`], is skipped with a note in the job's log, and the lines after it count.
    fn collect_metrics(&mut self) -> Option<i64> {
        let mut f = std::fs::File::open(self.out.join(METRICS_FILE)).ok()?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.read.metrics_offset {
            // Rewritten on resume from the checkpoint's history: read it again (the coordinator
            // stores each epoch once).
            self.read.metrics_offset = 0;
        }
        f.seek(SeekFrom::Start(self.read.metrics_offset)).ok()?;
        let mut bytes = Vec::new();
        (&mut f)
            .take(METRICS_READ as u64)
            .read_to_end(&mut bytes)
            .ok()?;
        let mut last = None;
        let mut rest = &bytes[..];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..end];
            rest = &rest[end + 1..];
            self.read.metrics_offset += end as u64 + 1;
            if std::mem::take(&mut self.read.metrics_overlong) {
                continue; // the end of a line already skipped as too long
            }
            if let Some(epoch) = self.forward_metrics_line(line) {
                last = Some(epoch);
            }
        }
        // No newline in a whole read: a line too long to be metrics. Skip it to its end.
        if rest.len() == METRICS_READ.min(bytes.len()) && rest.len() >= MAX_METRICS_LINE {
            self.read.metrics_offset += rest.len() as u64;
            if !std::mem::replace(&mut self.read.metrics_overlong, true) {
                self.metrics_note(&format!(
                    "a metrics line longer than {MAX_METRICS_LINE} bytes: skipped"
                ));
            }
        }
        last
    }

    /// One line of metrics: forwarded (its epoch returned when new) or skipped with a note.
    fn forward_metrics_line(&mut self, line: &[u8]) -> Option<i64> {
        if line.len() > MAX_METRICS_LINE {
            self.metrics_note(&format!(
                "a metrics line longer than {MAX_METRICS_LINE} bytes: skipped"
            ));
            return None;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            self.metrics_note("a metrics line that is not UTF-8: skipped");
            return None;
        };
        if text.trim().is_empty() {
            return None;
        }
        let Some(m) = program::read_line(self.program(), text) else {
            self.metrics_note(&format!(
                "a metrics line without an integer epoch >= 1 (or not JSON): skipped: {}",
                text.chars().take(200).collect::<String>()
            ));
            return None;
        };
        let mut p = self.progress.lock().expect("not poisoned");
        p.epoch = m.epoch.max(0) as u32;
        p.accuracy = m.accuracy.or(p.accuracy);
        drop(p);
        self.stops.diverged |= m.diverged;
        // Restored epochs keep the record of the attempt that computed them.
        if m.epoch <= self.read.restored_epoch {
            return None;
        }
        let epoch = m.epoch;
        self.outbox.push(Write::Metrics(m));
        Some(epoch)
    }

    fn metrics_note(&self, why: &str) {
        tracing::warn!(job = self.job(), "{why}");
        self.read.output.note(why);
    }

    /// The trainer's newly committed resume file; a command's checkpoint directory archived after
    /// each new line (with that line's epoch, so a resume knows which epochs it holds).
    fn collect_checkpoint(&mut self, last_new_epoch: Option<i64>) {
        let changed = match self.program() {
            Program::Trainer => {
                let Ok(meta) = std::fs::metadata(self.program().checkpoint_file(&self.out)) else {
                    return;
                };
                let stamp = (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                );
                let changed = self.read.resume_seen != Some(stamp);
                self.read.resume_seen = Some(stamp);
                changed
            }
            Program::Command { .. } => match last_new_epoch {
                None => false,
                Some(epoch) => match program::pack_checkpoint(&self.out, epoch) {
                    Ok(packed) => packed.is_some(),
                    Err(e) => {
                        tracing::warn!(job = self.job(), error = %e, "cannot archive the checkpoint directory");
                        false
                    }
                },
            },
        };
        if changed {
            self.outbox.push(Write::Upload);
        }
    }
}
