//! `averager demo --processes`: one OS process per peer, meeting through Kademlia.

use std::time::Duration;

use crate::common::run;

#[test]
fn demo_with_one_process_per_peer_agrees() {
    let out = run(
        &["demo", "--processes", "--peers", "4", "--floats", "20000", "--rounds", "4"],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("one OS process each") && out.stdout.contains("dht kad"), "{out:?}");
    assert!(out.last_line().starts_with("every peer holds the global mean: yes"), "{out:?}");
}
