//! `averager plan`: the all-reduce plan, printed without running anything.

use std::time::Duration;

use crate::common::run;

const LIMIT: Duration = Duration::from_secs(60);

/// The spans of 4 peers with the bandwidths of issue 15's example: shares grow with bandwidth,
/// every element is reduced by exactly one peer, and the predicted time is the slowest download.
#[test]
fn plan_prints_spans_traffic_and_the_predicted_time() {
    let out = run(&["plan", "--peers", "4", "--floats", "16M", "--bandwidths", "6e6,12e6,24e6,48e6"], LIMIT);
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<Vec<&str>> =
        out.stdout.lines().filter(|l| l.contains("NODE")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 4, "{}", out.stdout);
    let elements: Vec<usize> = rows.iter().map(|r| r[4].parse().unwrap()).collect();
    assert_eq!(elements.iter().sum::<usize>(), 16 << 20, "{}", out.stdout);
    assert!(elements.windows(2).all(|w| w[0] <= w[1]), "{elements:?}");
    let predicted = out.stdout.lines().last().unwrap();
    assert!(predicted.starts_with("predicted time") && predicted.ends_with(" s"), "{predicted}");
    // Bad input is a message.
    let bad = run(&["plan", "--peers", "3", "--bandwidths", "1,2"], LIMIT);
    assert!(!bad.status.success() && bad.stderr.contains("--bandwidths names 2 peers"), "{bad:?}");
    let bad = run(&["plan", "--floats", "lots"], LIMIT);
    assert!(!bad.status.success() && bad.stderr.contains("not a count"), "{bad:?}");
}
