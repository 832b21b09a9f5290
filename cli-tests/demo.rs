//! `averager demo`: a small swarm reaches the global mean and says so on its last line.

use std::time::Duration;

use crate::common::run;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn demo_of_four_small_peers_agrees_and_plots() {
    let dir = std::env::temp_dir().join(format!("averager-cli-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("spread.svg");
    let plot_arg = plot.to_str().unwrap();
    let out = run(
        &[
            "demo", "--peers", "4", "--floats", "100000", "--rounds", "4", "--dht", "memory", "--plot",
            plot_arg,
        ],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.last_line().starts_with("every peer holds the global mean: yes"), "{out:?}");
    // One line per round, each with the figures the demo promises.
    let rounds: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("round ") && !l.starts_with("round 0")).collect();
    assert!(!rounds.is_empty() && rounds.len() <= 4, "{out:?}");
    for line in &rounds {
        for part in ["groups", "all-reduce", "algbw", "MB/s per peer", "spread"] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{svg:.100}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_on_in_process_backends_with_a_lossy_codec() {
    let out = run(
        &[
            "demo",
            "--peers",
            "4",
            "--floats",
            "50000",
            "--transport",
            "memory",
            "--dht",
            "memory",
            "--compression",
            "float16",
        ],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.last_line().starts_with("every peer holds the global mean: yes"), "{out:?}");
}

#[test]
fn three_peers_form_one_group_and_agree() {
    let args = ["demo", "--peers", "3", "--floats", "20000", "--transport", "memory", "--dht", "memory"];
    let out = run(&args, LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("one group of 3"), "{out:?}");
    assert!(out.last_line().starts_with("every peer holds the global mean: yes"), "{out:?}");
    assert!(out.last_line().ends_with("after 1 rounds)"), "{out:?}");
}

#[test]
fn an_8_bit_codec_over_quic_is_judged_by_its_own_error() {
    let out = run(
        &[
            "demo",
            "--peers",
            "4",
            "--floats",
            "200000",
            "--transport",
            "quic",
            "--dht",
            "memory",
            "--compression",
            "uniform8",
        ],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    let verdict = out.last_line();
    assert!(verdict.starts_with("every peer holds the global mean: yes"), "{out:?}");
    assert!(verdict.contains("the codec's rms error"), "{verdict}");
}
