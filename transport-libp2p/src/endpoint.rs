//! Endpoints of the libp2p transport: `libp2p://<peer id>`, or `libp2p://<multiaddr>/p2p/<peer id>`
//! to give an address to dial as well. The peer id is the identity; the address is only a hint.

use averager_core::transport::split_endpoint;
use averager_core::{Error, Result};
use averager_dht::{Multiaddr, PeerId};
use libp2p::multiaddr::Protocol;

/// The endpoint scheme, and the transport's registry name.
pub(crate) const SCHEME: &str = "libp2p";

/// A parsed endpoint: the peer, and addresses to try besides those the node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) peer: PeerId,
    pub(crate) addresses: Vec<Multiaddr>,
}

/// The endpoint that names `peer` (what a server advertises and what the caller's identity is
/// compared with).
pub fn endpoint_of(peer: &PeerId) -> String {
    format!("{SCHEME}://{peer}")
}

/// The peer an endpoint names.
///
/// # Errors
/// [`Error::Config`] for anything but `libp2p://<peer id>` or `libp2p://<multiaddr>/p2p/<peer id>`.
pub fn peer_of(endpoint: &str) -> Result<PeerId> {
    parse(endpoint).map(|target| target.peer)
}

pub(crate) fn parse(endpoint: &str) -> Result<Target> {
    let bad = |why: &str| Error::Config(format!("{endpoint:?} is not a libp2p endpoint: {why}"));
    let (scheme, rest) = split_endpoint(endpoint)?;
    if scheme != SCHEME {
        return Err(bad(&format!("the scheme is {scheme:?}, not {SCHEME:?}")));
    }
    if rest.starts_with('/') {
        let mut addr: Multiaddr = rest.parse().map_err(|e| bad(&format!("{e}")))?;
        return match addr.pop() {
            Some(Protocol::P2p(peer)) if !addr.is_empty() => Ok(Target { peer, addresses: vec![addr] }),
            _ => Err(bad("a multiaddr endpoint must end in /p2p/<peer id> after an address")),
        };
    }
    let peer: PeerId = rest.parse().map_err(|e| bad(&format!("{e}")))?;
    Ok(Target { peer, addresses: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_and_addressed_peer_ids_parse_and_the_rest_does_not() {
        let peer = PeerId::random();
        let plain = parse(&endpoint_of(&peer)).expect("a peer id endpoint");
        assert_eq!(plain, Target { peer, addresses: vec![] });
        let addressed = parse(&format!("libp2p:///ip4/127.0.0.1/tcp/4001/p2p/{peer}")).expect("addressed");
        assert_eq!(addressed.peer, peer);
        assert_eq!(addressed.addresses, vec!["/ip4/127.0.0.1/tcp/4001".parse::<Multiaddr>().unwrap()]);
        for bad in [
            "libp2p://",
            "libp2p://not-a-peer",
            "quic://127.0.0.1:4",
            &format!("libp2p:///p2p/{peer}"),
            "libp2p:///ip4/127.0.0.1/tcp/4001",
            "no-scheme",
        ] {
            assert!(matches!(parse(bad), Err(Error::Config(_))), "{bad}");
        }
    }
}
