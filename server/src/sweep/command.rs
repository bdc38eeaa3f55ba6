//! A sweep's `[command]`: checked whole at submit time, so a worker is never handed a command it
//! cannot render. The rendering itself is the protocol's ([`protocol::command::render`]), the
//! same function the worker runs.
use protocol::command::{placeholders, RenderError};
use protocol::CommandSpec;
use serde_json::Value;
use std::collections::BTreeSet;

use super::{err, SpecError, MAX_STRING};

/// Most argv entries (a command line, not a data channel).
pub const MAX_ARGS: usize = 256;
/// Most ranks a command job may ask of one worker.
pub const MAX_RANKS: i64 = 1024;
/// Parameter names of a command job: an identifier of at most this many bytes.
pub const MAX_NAME: usize = 64;

/// Checks `[command]` (its structure already read by serde): a worker is never handed a command
/// it cannot run.
pub fn validate(command: Option<CommandSpec>) -> Result<Option<CommandSpec>, SpecError> {
    let Some(command) = command else {
        return Ok(None);
    };
    let argv = &command.argv;
    if argv.is_empty() {
        return err("command.argv", "must name at least the program");
    }
    if argv.len() > MAX_ARGS {
        return err("command.argv", format!("at most {MAX_ARGS} entries"));
    }
    for (i, s) in argv.iter().enumerate() {
        let field = format!("command.argv[{i}]");
        if s.len() > MAX_STRING {
            return err(field, format!("longer than {MAX_STRING} bytes"));
        }
        if s.contains('\0') {
            return err(field, "must not contain a NUL byte");
        }
        if i == 0 && s.trim().is_empty() {
            return err(field, "must name the program");
        }
    }
    if let Some(workdir) = &command.workdir {
        if workdir.len() > MAX_STRING {
            return err("command.workdir", format!("longer than {MAX_STRING} bytes"));
        }
        if let Err(why) = protocol::check_relative_path(workdir) {
            return err(
                "command.workdir",
                format!(
                    "{} (it is under the worker's --command-root)",
                    why.message()
                ),
            );
        }
    }
    if !(1..=MAX_RANKS).contains(&command.ranks) {
        return err(
            "command.ranks",
            format!("must be an integer from 1 to {MAX_RANKS}"),
        );
    }
    let max_nodes = protocol::train::MAX_NNODES;
    if !(1..=max_nodes).contains(&command.nnodes) {
        return err(
            "command.nnodes",
            format!("must be an integer from 1 to {max_nodes}"),
        );
    }
    Ok(Some(command))
}

/// A command job's parameter: an identifier for a name (it becomes a placeholder), a scalar value
/// (it becomes one argument).
pub fn check_parameter(field: &str, key: &str, v: &Value) -> Result<(), SpecError> {
    let identifier = !key.is_empty()
        && key.len() <= MAX_NAME
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !identifier {
        return err(
            field,
            format!("a parameter name is letters, digits and _ (at most {MAX_NAME} bytes, not starting with a digit)"),
        );
    }
    match v {
        Value::String(s) if s.len() > MAX_STRING => {
            err(field, format!("longer than {MAX_STRING} bytes"))
        }
        Value::String(s) if s.contains('\0') => err(field, "must not contain a NUL byte"),
        Value::Number(n) if n.as_f64().is_none_or(|x| !x.is_finite()) => {
            err(field, "must be a finite number")
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        _ => err(field, "must be a string, a number or true/false"),
    }
}

/// Every `{name}` in argv must be a parameter every job has.
pub fn check_placeholders(
    command: &CommandSpec,
    names: &BTreeSet<String>,
) -> Result<(), SpecError> {
    for (index, template) in command.argv.iter().enumerate() {
        let field = format!("command.argv[{index}]");
        let found = placeholders(template, index).map_err(|e| SpecError {
            field: field.clone(),
            message: e.to_string(),
        })?;
        if let Some(name) = found.into_iter().find(|n| !names.contains(*n)) {
            let e = RenderError::Unknown {
                index,
                name: name.to_string(),
            };
            return err(
                field,
                format!(
                    "{e}; the jobs' parameters are: {}",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::sweep::SweepSpec;

    fn field_of(toml: &str) -> String {
        match SweepSpec::from_toml(toml) {
            Err(crate::sweep::ParseError::Invalid(e)) => e.field,
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn command_sweeps_take_free_names_and_check_placeholders() {
        let ok = SweepSpec::from_toml(
            r#"name = "s"
               [command]
               argv = ["python3", "train.py", "--lr", "{lr}", "--depth={depth}", "{epochs}"]
               workdir = "examples/pytorch"
               [train]
               epochs = 5
               [grid]
               lr = [1e-2, 1e-4]
               depth = [2, 4]"#,
        )
        .unwrap();
        assert_eq!(ok.expand().len(), 4);
        assert_eq!(ok.command.as_ref().unwrap().ranks, 1);
        let base = "name = \"s\"\n[train]\nlr = 0.1\n";
        for (extra, field) in [
            ("[command]\nargv = []\n", "command.argv"),
            ("[command]\nargv = [\"x\", \"{nope}\"]\n", "command.argv[1]"),
            ("[command]\nargv = [\"x\", \"{lr\"]\n", "command.argv[1]"),
            (
                "[command]\nargv = [\"x\"]\nworkdir = \"/tmp\"\n",
                "command.workdir",
            ),
            (
                "[command]\nargv = [\"x\"]\nworkdir = \"a/../..\"\n",
                "command.workdir",
            ),
            ("[command]\nargv = [\"x\"]\nranks = 0\n", "command.ranks"),
            ("[command]\nargv = [\"x\"]\nshell = true\n", "command.shell"),
            ("[command]\nargv = \"python3 train.py\"\n", "command.argv"),
        ] {
            assert_eq!(field_of(&format!("{base}{extra}")), field, "{extra}");
        }
        // A name only one of two grid tables has is not every job's.
        assert_eq!(
            field_of(
                "name = \"s\"\n[command]\nargv = [\"x\", \"{a}\"]\n[[grid]]\na = [1]\n[[grid]]\nb = [2]\n"
            ),
            "command.argv[1]"
        );
        // Without [command], names are still `worker train` options.
        assert_eq!(
            field_of("name = \"s\"\n[train]\ndepth = 2\n"),
            "train.depth"
        );
    }
}
