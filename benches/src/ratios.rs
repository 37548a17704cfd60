//! Ratio reports over criterion results of the same run.
//!
//! Criterion stores each benchmark's estimates in `<target>/criterion/<group>/<id>/new/`.
//! A ratio is `baseline time / candidate time`: 1.0 means as fast as the baseline, 0.5 half
//! as fast.

use std::path::{Path, PathBuf};

/// One line of a ratio report.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub group: String,
    pub candidate: String,
    pub baseline: String,
    /// The ratio the project aims for, if it has one, printed beside the measurement.
    pub target: Option<f64>,
}

/// Where criterion writes, derived from the running bench binary
/// (`<target>/<profile>/deps/<bench>-<hash>`), unless `CRITERION_HOME` says otherwise.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("criterion"))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Mean time per iteration in nanoseconds, from criterion's `estimates.json`.
pub fn mean_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let path = dir.join(group).join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("mean")?.get("point_estimate")?.as_f64()
}

/// Prints one table row per comparison; missing results (filtered-out benches) are skipped.
pub fn print_report(title: &str, dir: &Path, comparisons: &[Comparison]) {
    println!("\n{title}");
    println!(
        "{:<16} {:<22} {:<22} {:>8} {:>8}  verdict",
        "group", "candidate", "baseline", "ratio", "target"
    );
    for c in comparisons {
        let (Some(candidate), Some(baseline)) = (
            mean_ns(dir, &c.group, &c.candidate),
            mean_ns(dir, &c.group, &c.baseline),
        ) else {
            continue;
        };
        let ratio = baseline / candidate;
        let (target, verdict) = match c.target {
            Some(t) if ratio >= t => (format!("{t:.2}"), "meets"),
            Some(t) => (format!("{t:.2}"), "BELOW"),
            None => ("-".into(), "(no target)"),
        };
        println!(
            "{:<16} {:<22} {:<22} {:>8.3} {:>8}  {verdict}",
            c.group, c.candidate, c.baseline, ratio, target
        );
    }
}
