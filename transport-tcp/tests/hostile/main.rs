//! Hostile callers against a TCP server: the conformance crate's hostile suite (length prefixes
//! far over the cap, messages announced but never sent, garbage, silent calls) over a raw TCP
//! caller, and what only this transport has: method bytes, and connections that never send one.

mod raw;

use std::sync::Arc;

use averager_conformance::hostile::{
    Counting, Echo, HostileTarget, RawStream, SERIAL, SHORT_FIRST_REQUEST, Watermark, bounded, honest_call,
    read_end, within,
};
use averager_conformance::{Outcome, ensure};

use crate::raw::Tcp;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

averager_conformance::hostile_suite!(tcp, crate::raw::Tcp);

/// Runs a TCP-only case as the suite runs its own.
fn run(name: &str, case: impl Future<Output = Outcome>) {
    averager_conformance::run_case(name, case);
}

#[test]
fn unknown_method_bytes_and_connections_that_name_none_are_refused() {
    run("unknown_method_bytes_and_connections_that_name_none_are_refused", async {
        const NAMELESS: usize = 20;
        let _serial = SERIAL.lock().await;
        let served = Tcp.serve(Arc::new(Echo::default()), SHORT_FIRST_REQUEST).await;
        let caller = Tcp.caller(&served).await;
        let watermark = Watermark::start();

        for method in [0, 4, 0x7F, 0xFF] {
            let mut call = caller.connection().await;
            call.write(&[method, 1, 2, 3, 4, 5]).await.expect("written");
            call.finish().await;
            let text = within("the refusal of a bad method", read_end(&mut call)).await?.error_text()?;
            ensure!(text.contains(&format!("unknown method byte {method}")), "{text}");
        }

        // Connections that send nothing at all are timed out, each with an error frame.
        let mut calls = Vec::new();
        for _ in 0..NAMELESS {
            calls.push(caller.connection().await);
        }
        for (i, call) in calls.iter_mut().enumerate() {
            let text = within("the method-byte timeout", read_end(call)).await?.error_text()?;
            ensure!(text.contains("timed out"), "connection {i}: {text}");
        }
        bounded(&watermark, "bad and missing method bytes")?;
        honest_call(Tcp.client().await, &Tcp.endpoint(&served)).await
    });
}
