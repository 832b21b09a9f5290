//! Hostile callers against a libp2p server: the conformance crate's hostile suite (length
//! prefixes far over the cap, messages announced but never sent, garbage, silent substreams),
//! the same as the QUIC transport's, over raw substreams of a node of the caller's own.

mod raw;

use averager_conformance::hostile::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

averager_conformance::hostile_suite!(libp2p, crate::raw::Libp2p);
