//! How a coordinator started as a process (`server serve --listen HOST:0`) says where it listens:
//! the first line of its stdout is `listening on URL`. Launchers (tests, the load generator, the
//! demo scripts) read it through [`start_coordinator`], so the line is written and read in one place.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const PREFIX: &str = "listening on ";

/// The line the coordinator prints once it accepts connections.
pub fn line(url: &str) -> String {
    format!("{PREFIX}{url}")
}

/// Spawns `cmd` (a `server serve ...`) and waits for its listening line: the child, and the
/// URL it serves. Its stdout is taken; stderr is left as `cmd` set it.
pub fn start_coordinator(mut cmd: Command) -> std::io::Result<(Child, String)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut first = String::new();
    let out = child.stdout.take().expect("stdout is piped");
    BufReader::new(out).read_line(&mut first)?;
    match first.trim().strip_prefix(PREFIX) {
        Some(url) => Ok((child, url.to_string())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other(format!(
                "the coordinator did not start (its first line: {first:?})"
            )))
        }
    }
}
