//! Hostile callers against a QUIC server: the conformance crate's hostile suite (length prefixes
//! far over the cap, messages announced but never sent, garbage, silent calls) over a raw QUIC
//! caller, and what only QUIC has: method bytes, streams that never name one, and an impostor
//! behind a pinned endpoint.

mod raw;

use std::sync::Arc;

use averager_conformance::hostile::{
    Counting, Echo, HostileTarget, LONG_FIRST_REQUEST, RawStream, SERIAL, SHORT_FIRST_REQUEST, Watermark,
    bounded, honest_call, read_end, within,
};
use averager_conformance::{Outcome, ensure};
use averager_core::Error;
use averager_core::transport::Transport;
use averager_transport_quic::{QuicSettings, QuicTransport};

use crate::raw::Quic;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

averager_conformance::hostile_suite!(quic, crate::raw::Quic);

/// Runs a QUIC-only case as the suite runs its own.
fn run(name: &str, case: impl Future<Output = Outcome>) {
    averager_conformance::run_case(name, case);
}

#[test]
fn unknown_method_bytes_and_streams_that_name_none_are_refused() {
    run("unknown_method_bytes_and_streams_that_name_none_are_refused", async {
        const NAMELESS: usize = 10;
        let _serial = SERIAL.lock().await;
        let served = Quic.serve(Arc::new(Echo::default()), SHORT_FIRST_REQUEST).await;
        let caller = Quic.caller(&served).await;
        let watermark = Watermark::start();

        for method in [0, 4, 0x7F, 0xFF] {
            let mut call = caller.stream().await;
            call.write(&[method, 1, 2, 3, 4, 5]).await.expect("written");
            call.finish().await;
            let text = within("the refusal of a bad method", read_end(&mut call)).await?.error_text()?;
            ensure!(text.contains(&format!("unknown method byte {method}")), "{text}");
        }

        // Streams that send nothing at all reach the server only when a later stream does (QUIC
        // opens every lower stream with it): the last one sends a method byte.
        let mut calls = Vec::new();
        for i in 0..NAMELESS {
            let mut call = caller.stream().await;
            if i == NAMELESS - 1 {
                call.write(&[1]).await.expect("written");
            }
            calls.push(call);
        }
        for (i, call) in calls.iter_mut().enumerate() {
            let text = within("the method-byte timeout", read_end(call)).await?.error_text()?;
            ensure!(text.contains("timed out"), "stream {i}: {text}");
        }
        bounded(&watermark, "bad and missing method bytes")?;
        honest_call(Quic.client().await, &Quic.endpoint(&served)).await
    });
}

#[test]
fn an_impostor_behind_a_pinned_endpoint_is_refused_and_poisons_nothing() {
    run("an_impostor_behind_a_pinned_endpoint_is_refused_and_poisons_nothing", async {
        let _serial = SERIAL.lock().await;
        let genuine = Quic.serve(Arc::new(Echo::default()), LONG_FIRST_REQUEST).await;
        let impostor = Quic.serve(Arc::new(Echo::default()), LONG_FIRST_REQUEST).await;
        let (genuine, impostor) = (Quic.endpoint(&genuine), Quic.endpoint(&impostor));
        let (_, genuine_pin) = genuine.split_once('#').expect("a pinned endpoint");
        let (impostor_address, impostor_pin) = impostor.split_once('#').expect("a pinned endpoint");

        // The genuine peer's endpoint, as another peer advertised it, but the impostor answers there.
        let client = QuicTransport::default();
        let forged = format!("{impostor_address}#{genuine_pin}");
        let Err(error) = within("the refused dial", client.connect(&forged)).await? else {
            return Err(averager_conformance::Failure::new("the forged endpoint connected"));
        };
        let text = error.to_string();
        ensure!(matches!(error, Error::Unreachable { .. }), "{error:?}");
        ensure!(text.contains("pin mismatch"), "refused by the pin, not by a timeout: {text}");
        ensure!(text.contains(genuine_pin) && text.contains(impostor_pin), "names both fingerprints: {text}");

        // Nothing of the refusal sticks: the same transport reaches both peers at their own pins,
        // and the impostor still serves honest callers.
        let again = within("the refused dial, again", client.connect(&forged)).await?;
        ensure!(again.is_err(), "a refused dial is never cached as a success");
        for endpoint in [&genuine, &impostor] {
            within("a dial at the right pin", client.connect(endpoint)).await??;
            honest_call(Quic.client().await, endpoint).await?;
        }

        // An endpoint's own pin wins over the settings' pin.
        let settings = QuicSettings { pin: Some(impostor_pin.to_string()), ..QuicSettings::default() };
        let pinned = QuicTransport::with_settings(settings).expect("valid settings");
        within("a dial at the endpoint's pin", pinned.connect(&genuine)).await??;
        Ok(())
    });
}
