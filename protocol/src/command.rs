//! Command jobs: a sweep that runs any program (`[command]`), and the environment contract between
//! the worker and that program. Defined once here: the coordinator checks a spec's placeholders
//! with [`render`] at submit time, the worker renders the same argv with it before starting the job.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a command job runs, as the sweep's `[command]` table says it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// No `deny_unknown_fields`: the worker protocol grows by optional fields, and a worker must not
// refuse a claim for one it does not know. The sweep file refuses unknown keys itself.
pub struct CommandSpec {
    /// The program and its arguments; `{name}` takes the job's parameter `name` (`{{` and `}}` are
    /// literal braces). Each entry stays one argument: no shell ever sees it.
    pub argv: Vec<String>,
    /// Where it runs, relative to the worker's `--command-root` (never absolute, never `..`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Devices (or CPU rank slots) the job needs on one worker.
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub ranks: i64,
    /// Workers the job spans (each with `ranks` free): every member runs the program with
    /// [`env::MASTER_ADDR`], [`env::MASTER_PORT`], [`env::NNODES`] and [`env::NODE_RANK`] set.
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub nnodes: i64,
}

fn one() -> i64 {
    1
}

/// The environment a command job runs with: the whole contract between a worker and a program.
pub mod env {
    /// The job's id on the coordinator.
    pub const JOB_ID: &str = "SWEEP_JOB_ID";
    /// The attempt (1 on the first run, higher on a retry or a resume on another worker).
    pub const ATTEMPT: &str = "SWEEP_ATTEMPT";
    /// The job's parameters as a JSON object (every `[train]` value and its grid point or draw).
    pub const PARAMS: &str = "SWEEP_PARAMS";
    /// A file the program appends one JSON object per line to: `epoch` (1-based) and any numeric
    /// metrics. Each line is forwarded as it appears; `NaN`/`Infinity` are allowed (a non-finite
    /// value of a key ending in `loss` ends the job `diverged`).
    pub const METRICS: &str = "SWEEP_METRICS";
    /// A directory: what the program leaves there is uploaded after each metrics line and put back
    /// before a retry or a resume on another worker.
    pub const CHECKPOINT_DIR: &str = "SWEEP_CHECKPOINT_DIR";
    /// Created by the worker when the job is cancelled, stopped early or the worker is stopping:
    /// the program may exit then (after saving); it gets SIGTERM after a grace period anyway.
    pub const STOP_FILE: &str = "SWEEP_STOP_FILE";
    /// Exit code that means "diverged" (a result, never retried); 0 means completed, anything
    /// else failed (retried while attempts are left).
    pub const EXIT_DIVERGED: i32 = 3;
    /// torchrun's rendezvous variables, set for every command job (a single-node job: this
    /// machine, a free port, one node), so a program may run `torchrun --nnodes "$NNODES"
    /// --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" ...`.
    pub const MASTER_ADDR: &str = "MASTER_ADDR";
    pub const MASTER_PORT: &str = "MASTER_PORT";
    pub const NNODES: &str = "NNODES";
    pub const NODE_RANK: &str = "NODE_RANK";

    /// Every variable a command job is started with, and what it holds: what `worker contract
    /// --json` prints and a client library reads (its tests check that it reads no other).
    pub const VARIABLES: [(&str, &str); 10] = [
        (JOB_ID, "the job's id on the coordinator"),
        (
            ATTEMPT,
            "the attempt: 1 on the first run, higher on a retry or a resume",
        ),
        (PARAMS, "the job's parameters as a JSON object"),
        (
            METRICS,
            "a file to append one JSON object per line to: epoch (1-based) and numeric metrics",
        ),
        (
            CHECKPOINT_DIR,
            "a directory uploaded after each metrics line and put back before a resume",
        ),
        (
            STOP_FILE,
            "created when the job should stop (cancelled, pruned, the worker stopping)",
        ),
        (
            MASTER_ADDR,
            "where the job's ranks meet (this machine for a single-node job)",
        ),
        (MASTER_PORT, "the rendezvous port"),
        (NNODES, "the workers the job spans"),
        (
            NODE_RANK,
            "this worker's node in the job (0 on a single-node job)",
        ),
    ];
}

/// A placeholder in `argv` that names no parameter of the job, or a lone brace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Unknown { index: usize, name: String },
    Brace { index: usize },
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Unknown { name, .. } => write!(
                f,
                "unknown placeholder {{{name}}}: it names no parameter of the job (set it in [train], [grid] or [search.space])"
            ),
            RenderError::Brace { .. } => {
                f.write_str("unbalanced brace: write {{ or }} for a literal one")
            }
        }
    }
}

impl RenderError {
    /// The argv entry it is in.
    pub fn index(&self) -> usize {
        match self {
            RenderError::Unknown { index, .. } | RenderError::Brace { index } => *index,
        }
    }
}

/// A parameter as one argument: strings as they are, numbers and booleans as JSON writes them.
pub fn argument(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The names `{...}` in one argv entry, in order; Err on a lone brace.
pub fn placeholders(template: &str, index: usize) -> Result<Vec<&str>, RenderError> {
    let mut names = vec![];
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
        if after.as_bytes().first() == Some(&c) {
            rest = &after[1..]; // `{{` or `}}`
            continue;
        }
        if c == b'}' {
            return Err(RenderError::Brace { index });
        }
        let Some(end) = after.find('}') else {
            return Err(RenderError::Brace { index });
        };
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// `argv` with each `{name}` replaced by the job's parameter `name`: one entry in, one argument out.
pub fn render(argv: &[String], params: &Map<String, Value>) -> Result<Vec<String>, RenderError> {
    argv.iter()
        .enumerate()
        .map(|(index, template)| {
            for name in placeholders(template, index)? {
                if !params.contains_key(name) {
                    return Err(RenderError::Unknown {
                        index,
                        name: name.to_string(),
                    });
                }
            }
            let mut out = String::with_capacity(template.len());
            let mut rest = template.as_str();
            while let Some(i) = rest.find(['{', '}']) {
                out.push_str(&rest[..i]);
                let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
                if after.as_bytes().first() == Some(&c) {
                    out.push(c as char);
                    rest = &after[1..];
                    continue;
                }
                let end = after.find('}').expect("checked above");
                out.push_str(&argument(&params[&after[..end]]));
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> Map<String, Value> {
        json!({"lr": 0.01, "batch_size": 16, "name": "a b; rm -rf /", "flag": true})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn placeholders_become_whole_arguments() {
        let argv: Vec<String> = [
            "train.py",
            "--lr",
            "{lr}",
            "--bs={batch_size}",
            "{name}",
            "{{x}}",
            "{flag}",
        ]
        .map(String::from)
        .to_vec();
        let out = render(&argv, &params()).unwrap();
        assert_eq!(
            out,
            [
                "train.py",
                "--lr",
                "0.01",
                "--bs=16",
                "a b; rm -rf /",
                "{x}",
                "true"
            ]
        );
    }

    #[test]
    fn unknown_names_and_lone_braces_are_refused_with_their_entry() {
        let bad = |s: &str| render(&["x".into(), s.into()], &params()).unwrap_err();
        assert_eq!(
            bad("--epochs={epochs}"),
            RenderError::Unknown {
                index: 1,
                name: "epochs".into()
            }
        );
        assert_eq!(bad("{lr"), RenderError::Brace { index: 1 });
        assert_eq!(bad("lr}"), RenderError::Brace { index: 1 });
    }
}
