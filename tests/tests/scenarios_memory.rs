//! The end-to-end averaging scenarios (protocol 10.2) on the in-process backends (the memory
//! transport and one MemoryDht), and proof that the suite catches a transport that breaks one RPC.

use std::sync::Arc;

use averager_conformance::scenarios::{self, memory_dhts, network};
use averager_conformance::{Failure, block_on_case, scenario_suite};
use averager_core::transport::{Fault, FaultyTransport, MemoryTransport, Rpc, Transport};

scenario_suite!(
    memory,
    network(memory_dhts, |_| async { Arc::new(MemoryTransport::default()) as Arc<dyn Transport> })
);

#[test]
fn run_all_reports_every_case_passing_for_memory() {
    let outcome = block_on_case(async {
        let factory =
            network(memory_dhts, |_| async { Arc::new(MemoryTransport::default()) as Arc<dyn Transport> });
        let outcomes = scenarios::run_all(&factory).await;
        assert_eq!(outcomes.len(), 19, "run_all ran {} cases", outcomes.len());
        for (name, outcome) in outcomes {
            outcome.map_err(|f| Failure::new(format!("{name}: {f}")))?;
        }
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
}

/// Every download call fails at once, so no peer can fetch a state: the state scenario must say
/// so rather than pass.
#[test]
fn a_transport_whose_downloads_fail_fails_the_state_scenario() {
    let outcome = block_on_case(scenarios::load_state_from_peers(&network(memory_dhts, |_| async {
        let (transport, plan) = FaultyTransport::new(Arc::new(MemoryTransport::default()));
        plan.add(Fault::FailAfter(0).rpc(Rpc::DownloadState));
        Arc::new(transport) as Arc<dyn Transport>
    })));
    let failure = outcome.expect_err("downloads that always fail passed the state scenario");
    assert!(failure.message.contains("found no donor"), "{failure}");
}
