//! `averager node --metrics`: a node serves Prometheus metrics over HTTP, and after a round with a
//! peer they count it (a success, bytes both ways, an all-reduce time, a group of 2); its log has
//! one line for the round with the group size, all-reduce seconds and MB/s.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{Node, averager, spawn_quiet, wait_or_kill};

const LIMIT: Duration = Duration::from_secs(120);

/// `GET /metrics` over a plain TCP stream; the body.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("the metrics endpoint accepts");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample named exactly `name` (with its labels).
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{body}"))
}

#[test]
fn a_node_serves_metrics_that_count_its_rounds() {
    let prefix = format!("metrics-test-{}", std::process::id());
    let common = ["--every", "1", "--group-size", "2", "--floats", "10000", "--prefix", prefix.as_str()];
    let mut a = Node::ready(
        "node A",
        averager()
            .args(["node", "--metrics", "127.0.0.1:0"])
            .args(common)
            .env("RUST_LOG", "warn,averager::node=info"),
        LIMIT,
    );
    let metrics = a.printed("metrics address ");
    let dht = a.printed("dht address ");

    // Before any round: the metrics exist, at zero.
    let before = scrape(&metrics);
    assert!(before.contains("# TYPE averager_allreduce_seconds histogram"), "{before}");
    assert_eq!(sample(&before, "averager_bytes_sent_total"), 0.0);

    let b =
        spawn_quiet("node B", averager().args(["node", "--steps", "3", "--bootstrap", &dht]).args(common));
    // The metrics are recorded before the round's log line.
    let line = a.err.until(LIMIT, |l| l.contains(" averaged"));
    let line = line.unwrap_or_else(|| panic!("node A never averaged: {:?}", a.err.seen));
    for field in ["group=2", "allreduce_secs=", "mb_per_s=", "moved=", "seconds="] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let body = scrape(&metrics);
    assert!(sample(&body, "averager_steps_total{outcome=\"success\"}") >= 1.0, "{body}");
    // 10,000 f32 are 40 kB: each node reduces part of them and sends back as much.
    assert!(sample(&body, "averager_bytes_sent_total") > 1000.0, "{body}");
    assert!(sample(&body, "averager_bytes_received_total") > 1000.0, "{body}");
    assert!(sample(&body, "averager_allreduce_seconds_count") >= 1.0, "{body}");
    let seconds = sample(&body, "averager_allreduce_seconds_sum");
    assert!(seconds > 0.0 && seconds < LIMIT.as_secs_f64(), "{body}");
    assert!(sample(&body, "averager_matchmaking_seconds_count") >= 1.0, "{body}");
    let groups = sample(&body, "averager_group_size_count");
    assert_eq!(sample(&body, "averager_group_size_sum"), 2.0 * groups, "{body}");

    let b_status = wait_or_kill(b, LIMIT, "node B");
    assert!(b_status.success(), "node B: {b_status}");
    let (status, _) = a.interrupt(LIMIT, "node A after SIGINT");
    assert!(status.success(), "node A after SIGINT: {status}");
}
