//! `averager node`: two nodes on loopback find each other through Kademlia and average; SIGINT
//! stops a node cleanly.

use std::path::Path;
use std::time::Duration;

use crate::common::{Node, averager, spawn_quiet, wait_or_kill};

const LIMIT: Duration = Duration::from_secs(120);

/// Node B of both tests: all 10.0 from a file in `dir`, two steps through `bootstrap`, writes the
/// average back; the values it ends with, each of which must be below 5.5 (after any successful
/// step with A, whose values are in [-1, 1), B holds (10 + a) / 2 or closer to A).
fn average_with_b(dir: &Path, bootstrap: &str, common: &[&str]) {
    let tensors = dir.join("b.f32");
    std::fs::write(&tensors, [10f32; 1000].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    let b = spawn_quiet(
        "node B",
        averager()
            .args(["node", "--steps", "2", "--write-back", "--bootstrap", bootstrap, "--tensors"])
            .arg(&tensors)
            .args(common),
    );
    let b_status = wait_or_kill(b, LIMIT, "node B");
    assert!(b_status.success(), "node B: {b_status}");
    let bytes = std::fs::read(&tensors).unwrap();
    let values: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert!(values.iter().all(|v| *v < 5.5 && *v > -1.0), "B did not average: {:?}", &values[..4]);
}

#[test]
fn two_nodes_average_and_sigint_stops_a_node_cleanly() {
    let dir = std::env::temp_dir().join(format!("averager-cli-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("node-test-{}", std::process::id());
    // gRPC, named: libp2p (the default) has a test of its own below.
    let common = ["--every", "1", "--group-size", "2", "--prefix", prefix.as_str(), "--transport", "grpc"];

    // Node A: random values in [-1, 1), runs until SIGINT.
    let a = Node::ready("node A", averager().args(["node", "--floats", "1000"]).args(common), LIMIT);
    let addr = a.printed("dht address ");
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/"), "{addr}");
    assert!(a.printed("averaging endpoint ").starts_with("grpc://127.0.0.1:"), "{:?}", a.out.seen);

    average_with_b(&dir, &addr, &common);

    let (status, rest) = a.interrupt(LIMIT, "node A after SIGINT");
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
    let node_a = || {
        let mut command = averager();
        command.args(["node", "--floats", "1000", "--identity"]).arg(&key).args(common);
        command
    };

    let a = Node::ready("node A", &mut node_a(), LIMIT);
    let peer = a.printed("peer id ");
    assert_eq!(a.printed("averaging endpoint "), format!("libp2p://{peer}"));
    let addr = a.printed("dht address ");
    assert!(addr.ends_with(&format!("/p2p/{peer}")), "{addr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("the identity file exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
    }

    average_with_b(&dir, &addr, &common);

    let (status, _) = a.interrupt(LIMIT, "node A after SIGINT");
    assert!(status.success(), "node A after SIGINT: {status}");

    // Restarted with the same identity file, node A is the same peer.
    let again = Node::spawn("node A restarted", node_a().args(["--steps", "0"]));
    let (status, rest) = again.finish(LIMIT, "node A restarted");
    assert!(status.success(), "node A restarted: {status}, {rest:?}");
    assert!(rest.iter().any(|l| *l == format!("peer id {peer}")), "a new peer id after a restart: {rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
