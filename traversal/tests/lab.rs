//! Hole punching through every ordered pair of netlab's NAT kinds (issue 12), one attempt per
//! pair and transport. Needs root and `../shared/netlab`, so it is ignored; run it with
//!
//! ```text
//! cargo test -p ferry-traversal --test lab -- --ignored --nocapture
//! ```
//!
//! (`NETLAB=/path/to/netlab` if the lab is elsewhere). Each pair holds
//! `flock /tmp/netlab.lock` from `up-nat` to `down`. For the full table, 20 attempts:
//! `ATTEMPTS=20 benches/nat/run.sh`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

const KINDS: [&str; 4] = ["fullcone", "restricted", "portrestricted", "symmetric"];

/// Where mapping behaviour allows a punch (issue 12).
fn punchable(k1: &str, k2: &str) -> bool {
    let easy = |k: &str| k == "fullcone" || k == "restricted";
    match (k1 == "symmetric", k2 == "symmetric") {
        (false, false) => true,
        (true, true) => false,
        (true, false) => easy(k2),
        (false, true) => easy(k1),
    }
}

#[test]
#[ignore = "needs root and the network lab (../shared/netlab); see the file header"]
fn punching_succeeds_wherever_the_nat_kinds_allow_it() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let netlab = std::env::var_os("NETLAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../shared/netlab/netlab"));
    if !netlab.exists()
        || !Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n")
    {
        eprintln!(
            "skipped: needs root and netlab at {} (set NETLAB)",
            netlab.display()
        );
        return;
    }
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "ferry-traversal",
            "--example",
            "punch-lab",
        ])
        .status()
        .unwrap();
    assert!(built.success(), "building the punch-lab example failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"));
    let bin = target.join("debug/examples/punch-lab");
    let mut wrong = Vec::new();
    for k1 in KINDS {
        for k2 in KINDS {
            let output = Command::new("flock")
                .arg("/tmp/netlab.lock")
                .arg(&bin)
                .args(["pair", k1, k2, "--attempts", "1", "--netlab"])
                .arg(&netlab)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "pair {k1} {k2}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 2, "one line per transport: {lines:?}");
            for line in lines {
                let both = line["dialer"]["ok"] == true && line["listener"]["ok"] == true;
                eprintln!(
                    "{k1} -> {k2} {}: {}",
                    line["transport"],
                    if both { "direct" } else { "failed" }
                );
                // A pair that should punch must; one that should not must fail cleanly (the
                // relay's job), never hang: `pair` bounds every attempt.
                if both != punchable(k1, k2) {
                    wrong.push(format!("{k1} -> {k2} over {}: {line}", line["transport"]));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
}
