//! What a successful step reports about itself (its group, timings and traffic), the figures
//! logs and metrics are made of.

mod common;

use std::time::Duration;

use averager_core::averager::{AveragerConfig, StepOptions};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_reports_its_group_timings_and_traffic() {
    let config = AveragerConfig {
        prefix: "report".into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_millis(500),
        ..AveragerConfig::default()
    };
    let floats = 10_000;
    let setup = (0..2).map(|i| (vec![f32s(&[floats], vec![i as f32; floats])], config.clone())).collect();
    let swarm = swarm(setup).await;
    let results = step_all(&swarm.peers, |_| StepOptions::default().timeout(Duration::from_secs(60))).await;
    let mut ids = Vec::new();
    for result in results {
        let gathered = result.expect("both peers average");
        let report = gathered.report();
        assert_eq!(report.group_size, 2);
        assert!(report.attempts >= 1);
        assert!(!report.group_id.is_empty());
        // Each peer reduces about half of the other's 40 kB and sends back as much.
        for bytes in [report.bytes_sent, report.bytes_received] {
            assert!((10_000..1_000_000).contains(&bytes), "{report:?}");
        }
        assert!(report.all_reduce > Duration::ZERO && report.bytes_per_second() > 0.0, "{report:?}");
        assert_eq!(report.failed_reducers, 0);
        ids.push(report.group_id.clone());
    }
    assert_eq!(ids[0], ids[1], "both peers name the same group");
    for p in &swarm.peers {
        assert_eq!(values(p).await[0][0], 0.5);
    }
}
