//! `averager sim`: a full 4^3 grid of in-process peers holds the exact mean after 3 rounds, as
//! Moshpit's theory says, and the churn and failure flags run and report.

use std::time::Duration;

use crate::common::run;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn sim_of_a_64_peer_grid_is_exact_after_3_rounds() {
    let dir = std::env::temp_dir().join(format!("averager-cli-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("sim.svg");
    let out = run(
        &["sim", "--peers", "64", "--group-size", "4", "--bits", "4", "--plot", plot.to_str().unwrap()],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("a full grid of 4^3 peers: exact after 3 rounds"), "{out:?}");
    assert_eq!(
        out.last_line(),
        "every peer holds the exact mean: yes, after 3 rounds (theory: 3)",
        "{out:?}"
    );
    let rounds: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("round ") && !l.starts_with("round 0")).collect();
    assert_eq!(rounds.len(), 3, "{out:?}");
    for line in &rounds {
        for part in ["16 groups (16 of 4)", "64/64 peers averaged", "spread", "distance to the mean"] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
    }
    assert!(out.stdout.contains("peak RSS"), "{out:?}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_with_churn_and_failures_reports_every_round() {
    let out = run(
        &[
            "sim",
            "--peers",
            "32",
            "--group-size",
            "4",
            "--rounds",
            "2",
            "--churn",
            "0.1",
            "--fail",
            "0.1",
            "--matchmaking-time",
            "1",
            "--timeout",
            "5",
        ],
        LIMIT,
    );
    // With churn and failures the run reports rather than promises the exact mean.
    assert!(out.status.success(), "{out:?}");
    let rounds =
        out.stdout.lines().filter(|l| l.starts_with("round 1:") || l.starts_with("round 2:")).count();
    assert_eq!(rounds, 2, "{out:?}");
    assert!(out.stdout.contains("left/died and were replaced"), "{out:?}");
}

#[test]
fn sim_refuses_bad_flags() {
    for args in [&["sim", "--group-size", "3"][..], &["sim", "--churn", "0.9"], &["sim", "--peers", "1"]] {
        let out = run(args, LIMIT);
        assert!(!out.status.success(), "{args:?} was accepted: {out:?}");
        assert!(out.stderr.contains("error"), "{out:?}");
    }
}
