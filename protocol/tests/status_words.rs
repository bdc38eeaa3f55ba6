//! A job's or a sweep's status is written as a word in one place: `protocol` (and the SQL, which
//! stores the words). Everywhere else in the Rust code, coordinator, worker and their tests, it is
//! `JobStatus::X`, `SweepStatus::X` or `Outcome::X`: a status a typo would make up cannot compile.
mod common;

const WORDS: [&str; 8] = [
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
    "diverged",
    "pruned",
    "finished",
];

/// A status word in double quotes used as a value. Not a literal of that kind: a count field of a
/// sweep read by name (`s["pending"]`), a JSON key (`"diverged": true`), words in a message a test
/// looks for (`.contains("failed")`).
fn status_literals(line: &str) -> Vec<&'static str> {
    let mut found = vec![];
    for word in WORDS {
        let quoted = format!("\"{word}\"");
        for (at, _) in line.match_indices(&quoted) {
            let before = &line[..at];
            let after = &line[at + quoted.len()..];
            let field = before.ends_with('[') && after.starts_with(']');
            let key = after.trim_start().starts_with(':');
            let text = before.ends_with("contains(");
            if !(field || key || text) {
                found.push(word);
            }
        }
    }
    found
}

#[test]
fn no_status_word_outside_protocol() {
    let root = common::root();
    let mut files = vec![];
    for dir in ["server/src", "server/tests", "worker/src", "worker/tests"] {
        common::rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "the walk found the sources");
    let mut bad = vec![];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let words = status_literals(line);
            if !words.is_empty() {
                bad.push(format!("{}:{}: {words:?}", file.display(), n + 1));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "status words outside protocol (use JobStatus / SweepStatus / Outcome):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_should() {
    assert_eq!(
        status_literals(r#"assert_eq!(j["status"], "completed");"#),
        ["completed"]
    );
    assert_eq!(status_literals(r#"if s == "finished" {"#), ["finished"]);
    assert!(status_literals(r#"let n = s["pending"].as_i64();"#).is_empty());
    assert!(status_literals(r#"json!({"diverged": true})"#).is_empty());
    assert!(status_literals(r#"err.contains("failed")"#).is_empty());
}
