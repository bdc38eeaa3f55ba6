//! A job's writes to the coordinator, kept in the order they were produced until each is
//! acknowledged: while the coordinator is unreachable the head waits and the queue grows (with
//! exponential backoff between tries); a refused write is dropped; a 409 (the lease is lost) ends
//! the flush. Only the newest checkpoint upload is kept, and output beyond a budget is dropped
//! oldest first (the coordinator keeps only the newest anyway); metrics and the finish never are.
use super::coordinator::CallError;
use protocol::{MetricsReport, Outcome};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Metrics(MetricsReport),
    /// The job's checkpoint file, as it is when sent.
    Upload,
    /// A chunk of output at `offset`; `gap`: the bytes just before it that were dropped (over
    /// the budget, or refused), which the coordinator is told so it accepts the jump.
    Log {
        offset: u64,
        gap: u64,
        data: Vec<u8>,
    },
    Finish {
        status: Outcome,
        summary: Option<Value>,
        error: Option<String>,
    },
    Release(String),
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Write>,
    /// Bytes of output queued, and the most that may be.
    log_queued: usize,
    max_log: usize,
    /// Output dropped with no later chunk queued yet to declare it: the next chunk pushed does.
    gap_ahead: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Outbox {
    pub fn new(max_log: usize) -> Self {
        Outbox {
            queue: VecDeque::new(),
            log_queued: 0,
            max_log,
            gap_ahead: 0,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a write behind the others. Returns the bytes of old output dropped to stay within
    /// the budget (0 almost always).
    pub fn push(&mut self, mut w: Write) -> usize {
        match &mut w {
            // Only the latest checkpoint matters: an older upload still queued is dropped.
            Write::Upload => self.queue.retain(|q| !matches!(q, Write::Upload)),
            Write::Log { data, gap, .. } => {
                self.log_queued += data.len();
                *gap += std::mem::take(&mut self.gap_ahead);
            }
            _ => {}
        }
        self.queue.push_back(w);
        let mut dropped = 0;
        while self.log_queued > self.max_log {
            let Some(i) = self
                .queue
                .iter()
                .position(|q| matches!(q, Write::Log { .. }))
            else {
                break;
            };
            if let Some(Write::Log { data, gap, .. }) = self.queue.remove(i) {
                self.log_queued -= data.len();
                dropped += data.len();
                self.declare_dropped(i, gap + data.len() as u64);
            }
        }
        dropped
    }

    /// Output that will never be sent: the next chunk from queue position `from` on starts
    /// after it, and declares it.
    fn declare_dropped(&mut self, from: usize, bytes: u64) {
        let next = self.queue.iter_mut().skip(from).find_map(|q| match q {
            Write::Log { gap, .. } => Some(gap),
            _ => None,
        });
        match next {
            Some(gap) => *gap += bytes,
            None => self.gap_ahead += bytes,
        }
    }

    /// Sends queued writes in order through `send` until the queue is empty or the coordinator is
    /// unavailable (the write stays at the head; the next try waits for the backoff). Err only
    /// when the lease is lost (that write is dropped: nothing of this attempt will be accepted).
    pub fn flush(
        &mut self,
        now: Instant,
        mut send: impl FnMut(&Write) -> Result<(), CallError>,
    ) -> Result<(), String> {
        if self.retry_at.is_some_and(|at| now < at) {
            return Ok(());
        }
        while let Some(w) = self.queue.pop_front() {
            let sent = send(&w);
            if let Err(CallError::Unavailable(e)) = &sent {
                tracing::warn!(error = %e, pending = self.queue.len() + 1, "coordinator unavailable; will retry");
                self.queue.push_front(w);
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return Ok(());
            }
            // Sent, refused or moot: the write has left the queue.
            if let Write::Log { data, gap, .. } = &w {
                self.log_queued -= data.len();
                if sent.is_err() {
                    self.declare_dropped(0, gap + data.len() as u64);
                }
            }
            match sent {
                Ok(()) => {
                    self.backoff = FIRST_BACKOFF;
                    self.retry_at = None;
                }
                Err(CallError::LeaseLost(why)) => return Err(why),
                Err(e @ (CallError::Refused(_) | CallError::Denied { .. })) => {
                    tracing::error!(error = %e, "the coordinator refused a write; dropping it");
                }
                Err(CallError::Unavailable(_)) => unreachable!("handled above"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epoch: i64) -> Write {
        Write::Metrics(MetricsReport {
            epoch,
            ..Default::default()
        })
    }

    fn log(offset: u64, len: usize) -> Write {
        Write::Log {
            offset,
            gap: 0,
            data: vec![b'x'; len],
        }
    }

    /// Everything queued, sent to a coordinator that takes it all.
    fn drain(outbox: &mut Outbox, now: Instant) -> Vec<Write> {
        let mut sent = vec![];
        outbox
            .flush(now, |w| {
                sent.push(w.clone());
                Ok(())
            })
            .unwrap();
        sent
    }

    fn epochs(sent: &[Write]) -> Vec<i64> {
        sent.iter()
            .filter_map(|w| match w {
                Write::Metrics(m) => Some(m.epoch),
                _ => None,
            })
            .collect()
    }

    /// An unreachable coordinator keeps every write, in order, and the tries back off.
    #[test]
    fn writes_wait_in_order_while_the_coordinator_is_down() {
        let mut outbox = Outbox::new(1 << 20);
        for e in 1..=3 {
            outbox.push(metrics(e));
        }
        let t0 = Instant::now();
        let mut tries = 0;
        let down =
            |_: &Write| -> Result<(), CallError> { Err(CallError::Unavailable("down".into())) };
        outbox
            .flush(t0, |w| {
                tries += 1;
                down(w)
            })
            .unwrap();
        assert_eq!((tries, outbox.len()), (1, 3));
        // Within the backoff nothing is tried; after it, the next try waits twice as long.
        outbox
            .flush(t0 + Duration::from_millis(100), |_| {
                panic!("tried within the backoff")
            })
            .unwrap();
        outbox.flush(t0 + Duration::from_millis(200), down).unwrap();
        outbox
            .flush(t0 + Duration::from_millis(500), |_| {
                panic!("tried within the backoff")
            })
            .unwrap();
        let sent = drain(&mut outbox, t0 + Duration::from_millis(600));
        assert_eq!(epochs(&sent), [1, 2, 3]);
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.backoff, FIRST_BACKOFF,
            "a success resets the backoff"
        );
    }

    #[test]
    fn the_backoff_stops_growing() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push(metrics(1));
        let mut now = Instant::now();
        for _ in 0..20 {
            outbox
                .flush(now, |_| Err(CallError::Unavailable("down".into())))
                .unwrap();
            now += MAX_BACKOFF;
        }
        assert_eq!(outbox.backoff, MAX_BACKOFF);
    }

    /// A refused write is dropped and the rest go on; a lost lease ends the flush.
    #[test]
    fn refused_writes_are_dropped_and_a_lost_lease_ends_it() {
        let mut outbox = Outbox::new(1 << 20);
        for e in 1..=4 {
            outbox.push(metrics(e));
        }
        let mut sent = vec![];
        let result = outbox.flush(Instant::now(), |w| {
            sent.push(w.clone());
            match w {
                Write::Metrics(m) if m.epoch == 2 => Err(CallError::Refused("bad".into())),
                Write::Metrics(m) if m.epoch == 3 => Err(CallError::LeaseLost("409".into())),
                _ => Ok(()),
            }
        });
        assert_eq!(result, Err("409".to_string()));
        assert_eq!(epochs(&sent), [1, 2, 3]);
        assert_eq!(outbox.len(), 1, "epoch 4 was not tried");
    }

    /// Only the newest upload is kept, behind what was written before it.
    #[test]
    fn only_the_newest_checkpoint_is_uploaded() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push(Write::Upload);
        outbox.push(metrics(1));
        outbox.push(Write::Upload);
        let sent = drain(&mut outbox, Instant::now());
        assert_eq!(sent, [metrics(1), Write::Upload]);
    }

    /// Past the output budget the oldest output goes; metrics and the finish stay.
    #[test]
    fn old_output_is_dropped_beyond_the_budget_and_nothing_else() {
        let mut outbox = Outbox::new(100);
        assert_eq!(outbox.push(log(0, 60)), 0);
        outbox.push(metrics(1));
        assert_eq!(outbox.push(log(60, 60)), 60, "the first chunk goes");
        outbox.push(Write::Finish {
            status: Outcome::Completed,
            summary: None,
            error: None,
        });
        assert_eq!(
            outbox.push(log(120, 200)),
            260,
            "more than the budget alone"
        );
        let sent = drain(&mut outbox, Instant::now());
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0], metrics(1));
        assert!(matches!(sent[1], Write::Finish { .. }));
        assert_eq!(outbox.log_queued, 0);
    }

    /// Output dropped (over the budget, or refused) is declared by the next chunk sent, so the
    /// coordinator accepts the jump in offsets; a gap nobody declared it refuses.
    #[test]
    fn dropped_output_is_declared_by_the_next_chunk() {
        let mut outbox = Outbox::new(100);
        outbox.push(log(0, 60));
        outbox.push(metrics(1));
        outbox.push(log(60, 30));
        assert_eq!(outbox.push(log(90, 30)), 60);
        let sent = drain(&mut outbox, Instant::now());
        let gaps: Vec<(u64, u64)> = sent
            .iter()
            .filter_map(|w| match w {
                Write::Log { offset, gap, .. } => Some((*offset, *gap)),
                _ => None,
            })
            .collect();
        assert_eq!(gaps, [(60, 60), (90, 0)]);
        // A chunk bigger than the budget goes whole; the next one pushed declares it.
        assert_eq!(outbox.push(log(120, 150)), 150);
        outbox.push(log(270, 10));
        let sent = drain(&mut outbox, Instant::now());
        assert!(
            matches!(
                sent[..],
                [Write::Log {
                    offset: 270,
                    gap: 150,
                    ..
                }]
            ),
            "{sent:?}"
        );
        // A refused chunk is declared by the one after it.
        outbox.push(log(280, 5));
        outbox.push(log(285, 5));
        let mut sent = vec![];
        outbox
            .flush(Instant::now(), |w| {
                sent.push(w.clone());
                match sent.len() {
                    1 => Err(CallError::Refused("no".into())),
                    _ => Ok(()),
                }
            })
            .unwrap();
        assert!(
            matches!(
                sent[1],
                Write::Log {
                    offset: 285,
                    gap: 5,
                    ..
                }
            ),
            "{sent:?}"
        );
    }
}
