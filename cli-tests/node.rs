//! `averager node`: two nodes on loopback find each other through Kademlia and average; SIGINT
//! stops a node cleanly.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{LineReader, averager, kill, wait_or_kill};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn two_nodes_average_and_sigint_stops_a_node_cleanly() {
    let dir = std::env::temp_dir().join(format!("averager-cli-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("node-test-{}", std::process::id());
    let common = ["--every", "1", "--group-size", "2", "--prefix", prefix.as_str()];

    // Node A: random values in [-1, 1), runs until SIGINT.
    let mut a = averager()
        .args(["node", "--floats", "1000"])
        .args(common)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node A starts");
    let mut a_out = LineReader::new(a.stdout.take().unwrap());
    let _a_err = LineReader::new(a.stderr.take().unwrap());
    assert!(a_out.until(LIMIT, |l| l == "ready").is_some(), "node A never got ready: {:?}", a_out.seen);
    let addr = a_out
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("dht address "))
        .expect("node A prints its DHT multiaddr")
        .to_string();
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/"), "{addr}");
    assert!(
        a_out.seen.iter().any(|l| l.starts_with("averaging endpoint grpc://127.0.0.1:")),
        "{:?}",
        a_out.seen
    );

    // Node B: all 10.0 from a file, two steps, writes the average back.
    let tensors = dir.join("b.f32");
    std::fs::write(&tensors, [10f32; 1000].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    let b = averager()
        .args(["node", "--steps", "2", "--write-back", "--bootstrap", &addr, "--tensors"])
        .arg(&tensors)
        .args(common)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node B starts");
    let b_status = wait_or_kill(b, LIMIT, "node B");
    assert!(b_status.success(), "node B: {b_status}");
    let bytes = std::fs::read(&tensors).unwrap();
    let values: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    // After any successful step with A, B holds (10 + a) / 2 or closer to A: below 5.5.
    assert!(values.iter().all(|v| *v < 5.5 && *v > -1.0), "B did not average: {:?}", &values[..4]);

    kill(a.id(), "INT");
    let rest = a_out.rest(LIMIT);
    let status = wait_or_kill(a, LIMIT, "node A after SIGINT");
    assert!(status.success(), "node A after SIGINT: {status}, stdout {rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
