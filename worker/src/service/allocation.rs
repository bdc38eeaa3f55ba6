//! When this worker's allocation ends: `--end-time`, else Slurm's `SLURM_JOB_END_TIME` where Slurm
//! sets it, else the end `squeue` (or `scontrol`) reports for `SLURM_JOB_ID`. Knowing it, the worker
//! claims only jobs whose next epoch fits before it and gives back what it runs in time, so no
//! epoch is lost to the time limit.
use anyhow::{bail, Result};
use std::process::Command;

/// `--end-time`: an instant, or `none` (ignore Slurm's end: the worker then runs until it is
/// signalled, as before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndFlag {
    /// Unix time in ms.
    At(i64),
    None,
}

/// Parses `--end-time`: RFC 3339 (`2026-12-07T18:00:00Z`, `...+08:00`), Unix seconds, or `none`.
pub fn parse_end_flag(s: &str) -> Result<EndFlag, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(EndFlag::None);
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(EndFlag::At(secs.saturating_mul(1000)));
    }
    rfc3339_ms(s).map(EndFlag::At).ok_or_else(|| {
        format!("`{s}` is not an end time: RFC 3339 (2026-12-07T18:00:00Z), Unix seconds, or none")
    })
}

/// The allocation's end and where it was learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// Unix time in ms.
    pub at_ms: i64,
    pub source: String,
}

/// This worker's end: the flag, else what Slurm says (`env` reads a variable, `run` a command's
/// standard output); None when there is none (not under Slurm, or a job without a time limit).
pub fn discover(
    flag: Option<EndFlag>,
    env: impl Fn(&str) -> Option<String>,
    run: impl Fn(&str, &[&str]) -> Option<String>,
) -> Result<Option<End>> {
    match flag {
        Some(EndFlag::At(at_ms)) => {
            return Ok(Some(End {
                at_ms,
                source: "--end-time".into(),
            }))
        }
        Some(EndFlag::None) => return Ok(None),
        None => {}
    }
    if let Some(v) = env("SLURM_JOB_END_TIME").filter(|v| !v.trim().is_empty()) {
        let Ok(secs) = v.trim().parse::<i64>() else {
            bail!(
                "SLURM_JOB_END_TIME={v} is not Unix seconds (give --end-time, or --end-time none)"
            );
        };
        return Ok(Some(End {
            at_ms: secs * 1000,
            source: "SLURM_JOB_END_TIME".into(),
        }));
    }
    let Some(job) = env("SLURM_JOB_ID") else {
        return Ok(None);
    };
    // Slurm 22.05 sets no variable: ask the controller. Both print local time without a zone.
    let asked = [
        ("squeue", vec!["-h", "-j", &job, "-o", "%e"]),
        ("scontrol", vec!["show", "job", &job]),
    ];
    for (program, args) in asked {
        let Some(out) = run(program, &args) else {
            continue;
        };
        let text = match program {
            "squeue" => out.lines().next().unwrap_or("").trim().to_string(),
            _ => out
                .split_whitespace()
                .find_map(|w| w.strip_prefix("EndTime="))
                .unwrap_or("")
                .to_string(),
        };
        if let Some(at_ms) = local_ms(&text) {
            return Ok(Some(End {
                at_ms,
                source: format!("{program} (Slurm job {job})"),
            }));
        }
        // "Unknown", "N/A", "UNLIMITED": no end to keep to.
        tracing::info!(%program, %job, end = %text, "Slurm reports no end time for this job");
        return Ok(None);
    }
    tracing::warn!(%job, "under Slurm, but neither squeue nor scontrol answered: no end time known (give --end-time)");
    Ok(None)
}

/// A program's standard output, if it ran and succeeded.
pub fn run_program(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `YYYY-MM-DDTHH:MM:SS` as this process's local time (its `TZ`, as Slurm's commands printed it).
fn local_ms(s: &str) -> Option<i64> {
    let (y, mo, d, h, mi, sec, rest) = civil(s)?;
    if !rest.is_empty() {
        return None;
    }
    // SAFETY: mktime reads and normalises the struct we own (and, as POSIX says, honours TZ).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = (y - 1900) as i32;
    tm.tm_mon = (mo - 1) as i32;
    tm.tm_mday = d as i32;
    tm.tm_hour = h as i32;
    tm.tm_min = mi as i32;
    tm.tm_sec = sec as i32;
    tm.tm_isdst = -1;
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t * 1000)
}

/// RFC 3339 (`2026-12-07T18:00:00Z`, with optional fraction and `+HH:MM` offset) as Unix ms.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let (y, mo, d, h, mi, sec, rest) = civil(s)?;
    let (frac_ms, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            let ms = format!("{:0<3}", &r[..digits.min(3)]).parse::<i64>().ok()?;
            (ms, &r[digits..])
        }
        None => (0, rest),
    };
    let offset_s = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh: i64 = z[1..3].parse().ok()?;
            let mm: i64 = z[4..6].parse().ok()?;
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (hh * 3600 + mm * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s) * 1000 + frac_ms)
}

/// The fields of `YYYY-MM-DDTHH:MM:SS` and what follows them.
#[allow(clippy::type_complexity)]
fn civil(s: &str) -> Option<(i64, i64, i64, i64, i64, i64, &str)> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, sec) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let valid = (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && sec < 61;
    valid.then_some((y, mo, d, h, mi, sec, &s[19..]))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix time now, in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(v: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| v.iter().find(|(n, _)| *n == k).map(|(_, x)| x.to_string())
    }

    #[test]
    fn end_times_parse_as_rfc_3339_unix_seconds_or_none() {
        assert_eq!(parse_end_flag("none"), Ok(EndFlag::None));
        assert_eq!(
            parse_end_flag("1800000000"),
            Ok(EndFlag::At(1_800_000_000_000))
        );
        assert_eq!(
            parse_end_flag("1970-01-02T00:00:00Z"),
            Ok(EndFlag::At(86_400_000))
        );
        assert_eq!(
            parse_end_flag("2026-12-07T18:00:00.25+08:00"),
            Ok(EndFlag::At(1_796_637_600_250)),
            "10:00:00.25 UTC"
        );
        assert!(parse_end_flag("tomorrow").unwrap_err().contains("RFC 3339"));
        assert!(parse_end_flag("2026-13-07T18:00:00Z").is_err());
    }

    #[test]
    fn the_end_comes_from_the_flag_then_slurms_variable_then_squeue_then_scontrol() {
        let never = |_: &str, _: &[&str]| -> Option<String> { panic!("nothing to ask") };
        let flag = discover(
            Some(EndFlag::At(5)),
            vars(&[("SLURM_JOB_END_TIME", "9")]),
            never,
        );
        assert_eq!(flag.unwrap().unwrap().at_ms, 5);
        let none = discover(Some(EndFlag::None), vars(&[("SLURM_JOB_ID", "3")]), never);
        assert_eq!(none.unwrap(), None, "--end-time none ignores Slurm");
        let var = discover(None, vars(&[("SLURM_JOB_END_TIME", "9")]), never).unwrap();
        assert_eq!(var.unwrap().at_ms, 9000);
        assert_eq!(discover(None, vars(&[]), never).unwrap(), None);

        // Slurm 22.05: no variable; squeue prints local time without a zone.
        let squeue = |p: &str, a: &[&str]| {
            assert_eq!((p, a), ("squeue", &["-h", "-j", "42", "-o", "%e"][..]));
            Some("2026-12-07T18:00:00\n".to_string())
        };
        let end = discover(None, vars(&[("SLURM_JOB_ID", "42")]), squeue)
            .unwrap()
            .unwrap();
        assert_eq!(end.at_ms, local_ms("2026-12-07T18:00:00").unwrap());
        assert!(end.source.contains("squeue"), "{end:?}");
        let scontrol = |p: &str, _: &[&str]| {
            match p {
            "squeue" => None,
            _ => Some("JobId=42 JobName=w\n   StartTime=2026-12-07T17:58:00 EndTime=2026-12-07T18:00:00 Deadline=N/A\n".into()),
        }
        };
        let end = discover(None, vars(&[("SLURM_JOB_ID", "42")]), scontrol)
            .unwrap()
            .unwrap();
        assert_eq!(end.at_ms, local_ms("2026-12-07T18:00:00").unwrap());
        let unlimited = |_: &str, _: &[&str]| Some("N/A\n".to_string());
        assert_eq!(
            discover(None, vars(&[("SLURM_JOB_ID", "42")]), unlimited).unwrap(),
            None
        );
        assert!(discover(None, vars(&[("SLURM_JOB_END_TIME", "soon")]), never).is_err());
    }
}
