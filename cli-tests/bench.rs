//! `averager bench`: the table, and the one JSON line that bench/run.sh parses.

use std::time::Duration;

use crate::common::run;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn bench_json_is_one_parseable_line_with_the_agreed_keys() {
    let out = run(&["bench", "--peers", "3", "--floats", "20000", "--rounds", "2", "--json"], LIMIT);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    assert_eq!(v["system"], "averager");
    assert_eq!(v["transport"], "grpc");
    assert_eq!(v["compression"], "none");
    assert_eq!(v["peers"], 3);
    assert_eq!(v["floats"], 20000);
    assert_eq!(v["rounds"], 2);
    for key in ["algbw_mb_s", "allreduce_s_median", "matchmaking_ms_median"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
}

#[test]
fn bench_table_names_its_columns() {
    let out = run(
        &[
            "bench",
            "--peers",
            "2",
            "--size",
            "40kB",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--transport",
            "memory",
        ],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("algbw med MB/s") && out.stdout.contains("memory"), "{out:?}");
}
