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

/// `--processes`: two worker processes average tiny tensors; the JSON line says so and carries
/// each worker's peak resident memory, the table prints it.
#[test]
fn bench_processes_runs_one_process_per_peer_and_reports_peak_rss() {
    let out =
        run(&["bench", "--processes", "--peers", "2", "--floats", "1000", "--rounds", "1", "--json"], LIMIT);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    assert_eq!(
        (v["processes"].as_bool(), v["dht"].as_str(), v["rounds"].as_u64()),
        (Some(true), Some("kad"), Some(1))
    );
    let peaks = v["peak_rss_mb"].as_array().expect("peak_rss_mb is a list");
    assert_eq!(peaks.len(), 2, "{v}");
    // Linux reports VmHWM; a worker is at least a megabyte and far below a gigabyte here.
    if cfg!(target_os = "linux") {
        assert!(peaks.iter().all(|p| p.as_f64().is_some_and(|mb| mb > 1.0 && mb < 1000.0)), "{v}");
    }

    let out = run(
        &["bench", "--processes", "--peers", "2", "--floats", "1000", "--rounds", "1", "--warmup", "0"],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("peak RSS per peer (MB, one process each):"), "{out:?}");
}
