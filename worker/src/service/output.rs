//! A job's output: its stdout and stderr read line by line on two threads and merged, in the order
//! lines arrive, into one log. The supervisor takes it in chunks (each with its byte offset in the
//! attempt's log) for the coordinator, and keeps the last lines for a failure's message.
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Lines kept for a failed job's error message.
const TAIL_LINES: usize = 30;
/// A line longer than this is cut into pieces (a program printing without newlines still streams).
const MAX_LINE: usize = 64 << 10;

#[derive(Debug, Default)]
struct Log {
    /// Output not yet taken, starting at byte `taken` of the attempt's log.
    pending: Vec<u8>,
    taken: u64,
    tail: VecDeque<String>,
    open_streams: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Output {
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl Output {
    /// Starts reading the child's stdout and stderr (whichever were piped).
    pub fn capture(child: &mut Child, job: i64) -> Self {
        let out = Output::default();
        let streams: Vec<Box<dyn Read + Send>> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.log.0.lock().expect("not poisoned").open_streams = streams.len();
        for stream in streams {
            let log = out.log.clone();
            std::thread::spawn(move || read_lines(stream, &log, job));
        }
        out
    }

    /// What was written since the last call, as (offset, bytes) chunks of at most `max` bytes.
    pub fn take(&self, max: usize) -> Vec<(u64, Vec<u8>)> {
        let mut log = self.log.0.lock().expect("not poisoned");
        let pending = std::mem::take(&mut log.pending);
        let mut chunks = vec![];
        for piece in pending.chunks(max.max(1)) {
            chunks.push((log.taken, piece.to_vec()));
            log.taken += piece.len() as u64;
        }
        chunks
    }

    /// A line of the worker's own in the job's log (what it did with the job's output), so
    /// whoever reads the log sees it where it happened.
    pub fn note(&self, text: &str) {
        let line = format!("[worker] {text}\n");
        let mut l = self.log.0.lock().expect("not poisoned");
        l.pending.extend_from_slice(line.as_bytes());
        if l.tail.len() == TAIL_LINES {
            l.tail.pop_front();
        }
        l.tail.push_back(line.trim_end().to_string());
    }

    /// The last lines written (for a failed job's error).
    pub fn tail(&self) -> Vec<String> {
        let log = self.log.0.lock().expect("not poisoned");
        log.tail.iter().cloned().collect()
    }

    /// Waits until both streams are closed (the child and anything it started that held them
    /// have exited), at most `timeout`: then everything it wrote is in.
    pub fn wait_closed(&self, timeout: Duration) {
        let (lock, cv) = &*self.log;
        let log = lock.lock().expect("not poisoned");
        let _ = cv
            .wait_timeout_while(log, timeout, |l| l.open_streams > 0)
            .expect("not poisoned");
    }
}

fn read_lines(stream: Box<dyn Read + Send>, log: &(Mutex<Log>, Condvar), job: i64) {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    loop {
        // A whole line, or MAX_LINE bytes of one: never more held per stream. Not what one read
        // returned: a program's unbuffered stderr writes a line in pieces (Rust's `eprintln!` one
        // write per argument), and a line cut there would lose its `error: ` to the tail.
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        tracing::debug!(job, "job: {text}");
        let mut l = log.0.lock().expect("not poisoned");
        l.pending.extend_from_slice(&line);
        if l.tail.len() == TAIL_LINES {
            l.tail.pop_front();
        }
        l.tail.push_back(text);
    }
    let mut l = log.0.lock().expect("not poisoned");
    l.open_streams -= 1;
    log.1.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn both_streams_arrive_whole_with_their_offsets() {
        let mut child = Command::new("sh")
            .args(["-c", "echo one; echo two >&2; printf 'no newline'"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Output::capture(&mut child, 1);
        child.wait().unwrap();
        out.wait_closed(Duration::from_secs(10));
        let chunks = out.take(5);
        let mut all = vec![];
        for (offset, bytes) in &chunks {
            assert_eq!(*offset as usize, all.len(), "chunks follow each other");
            assert!(bytes.len() <= 5);
            all.extend_from_slice(bytes);
        }
        let text = String::from_utf8(all).unwrap();
        for line in ["one\n", "two\n", "no newline"] {
            assert!(text.contains(line), "{text:?}");
        }
        assert_eq!(text.len(), "one\ntwo\nno newline".len());
        assert!(out.take(5).is_empty(), "taken once");
        assert_eq!(out.tail().len(), 3);
    }
}
