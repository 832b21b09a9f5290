//! protocol 10.1 scenario 3 through the averager. The end-to-end averaging scenarios (protocol 10.2 4-7)
//! live in the conformance crate's scenario suite (`averager_conformance::scenarios`), which runs
//! them on every transport and DHT backend, the memory ones included.

mod common;

use averager_core::averager::AveragerConfig;
use common::*;

fn config() -> AveragerConfig {
    AveragerConfig { prefix: "mygroup".into(), ..AveragerConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_group_bits_round_trip() {
    let swarm = swarm(vec![(vec![f32s(&[1], [0.0])], config())]).await;
    swarm.peers[0].set_group_bits("00101011101010").await.unwrap();
    assert_eq!(swarm.peers[0].group_bits().await, "00101011101010");
    assert!(swarm.peers[0].set_group_bits("0012").await.is_err());
    assert_eq!(swarm.peers[0].group_bits().await, "00101011101010");
}
