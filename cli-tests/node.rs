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
    // gRPC, named: libp2p (the default) has a test of its own below.
    let common = ["--every", "1", "--group-size", "2", "--prefix", prefix.as_str(), "--transport", "grpc"];

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

/// `--transport libp2p`: a node serves its RPCs on its Kademlia node's own port and identity,
/// prints its peer id, and keeps that peer id across restarts with `--identity`.
#[test]
fn libp2p_nodes_average_on_one_port_and_an_identity_file_keeps_the_peer_id() {
    let dir = std::env::temp_dir().join(format!("averager-cli-libp2p-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("a.key");
    let prefix = format!("libp2p-test-{}", std::process::id());
    let common = ["--every", "1", "--group-size", "2", "--transport", "libp2p", "--prefix", prefix.as_str()];

    let start_a = |steps: Option<&str>| {
        let mut command = averager();
        command.args(["node", "--floats", "1000", "--identity"]).arg(&key).args(common);
        if let Some(steps) = steps {
            command.args(["--steps", steps]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node A starts")
    };
    let mut a = start_a(None);
    let mut a_out = LineReader::new(a.stdout.take().unwrap());
    let _a_err = LineReader::new(a.stderr.take().unwrap());
    assert!(a_out.until(LIMIT, |l| l == "ready").is_some(), "node A never got ready: {:?}", a_out.seen);
    let peer = a_out.seen.iter().find_map(|l| l.strip_prefix("peer id ")).expect("a peer id").to_string();
    assert!(
        a_out.seen.iter().any(|l| *l == format!("averaging endpoint libp2p://{peer}")),
        "{:?}",
        a_out.seen
    );
    let addr =
        a_out.seen.iter().find_map(|l| l.strip_prefix("dht address ")).expect("an address").to_string();
    assert!(addr.ends_with(&format!("/p2p/{peer}")), "{addr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("the identity file exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
    }

    // Node B: all 10.0 from a file, two steps over libp2p, writes the average back.
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
    assert!(values.iter().all(|v| *v < 5.5 && *v > -1.0), "B did not average: {:?}", &values[..4]);

    kill(a.id(), "INT");
    let _ = a_out.rest(LIMIT);
    let status = wait_or_kill(a, LIMIT, "node A after SIGINT");
    assert!(status.success(), "node A after SIGINT: {status}");

    // Restarted with the same identity file, node A is the same peer.
    let mut again = start_a(Some("0"));
    let mut again_out = LineReader::new(again.stdout.take().unwrap());
    let _again_err = LineReader::new(again.stderr.take().unwrap());
    let rest = again_out.rest(LIMIT);
    let status = wait_or_kill(again, LIMIT, "node A restarted");
    assert!(status.success(), "node A restarted: {status}, {rest:?}");
    assert!(rest.iter().any(|l| *l == format!("peer id {peer}")), "a new peer id after a restart: {rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
