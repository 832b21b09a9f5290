//! [`Reachability`]: how other peers can reach this node, from what AutoNAT, the relay client and
//! hole punching (DCUtR) have reported so far.

use std::collections::BTreeSet;
use std::fmt;

use libp2p::PeerId;

/// How other peers can reach this node, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reachability {
    /// Nothing known yet: AutoNAT has not finished a probe and no relay slot is held.
    Unknown,
    /// Directly: AutoNAT's probes reached it, or it was given an external address.
    Direct,
    /// Behind a NAT, and hole punching has turned at least one relayed connection into a direct
    /// one.
    HolePunched,
    /// Behind a NAT, and only through a relay it holds a slot on.
    Relayed,
    /// Behind a NAT, with no relay: only peers it dials itself reach it.
    Private,
}

impl Reachability {
    /// A short name for logs and the command line's output.
    pub fn name(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Direct => "direct",
            Reachability::HolePunched => "hole-punched",
            Reachability::Relayed => "relayed",
            Reachability::Private => "private",
        }
    }
}

impl fmt::Display for Reachability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What AutoNAT concluded last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Nat {
    #[default]
    Unknown,
    Public,
    Private,
}

/// The facts [`Reachability`] is derived from, and the peers reached by hole punching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatReport {
    pub(crate) nat: Nat,
    /// An external address was configured (`--external-addr`): reachable whatever AutoNAT says.
    pub(crate) configured_external: bool,
    /// Relays on which this node holds a reservation now.
    pub(crate) relays: BTreeSet<PeerId>,
    /// Peers a hole punch (DCUtR) has connected to directly.
    pub(crate) hole_punched: BTreeSet<PeerId>,
}

impl NatReport {
    /// How others reach this node.
    pub fn reachability(&self) -> Reachability {
        if self.configured_external || self.nat == Nat::Public {
            Reachability::Direct
        } else if !self.hole_punched.is_empty() {
            Reachability::HolePunched
        } else if !self.relays.is_empty() {
            Reachability::Relayed
        } else if self.nat == Nat::Private {
            Reachability::Private
        } else {
            Reachability::Unknown
        }
    }

    /// The peers a hole punch has connected this node to directly (the connections may have
    /// closed since).
    pub fn hole_punched(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.hole_punched.iter().copied()
    }

    /// The relays this node holds a reservation on now.
    pub fn relays(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.relays.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_node_is_direct_whatever_else_happened() {
        let mut report = NatReport { nat: Nat::Public, ..Default::default() };
        report.relays.insert(PeerId::random());
        assert_eq!(report.reachability(), Reachability::Direct);
        let configured = NatReport { configured_external: true, nat: Nat::Private, ..Default::default() };
        assert_eq!(configured.reachability(), Reachability::Direct);
    }

    #[test]
    fn a_natted_node_goes_from_private_to_relayed_to_hole_punched() {
        let mut report = NatReport::default();
        assert_eq!(report.reachability(), Reachability::Unknown);
        report.nat = Nat::Private;
        assert_eq!(report.reachability(), Reachability::Private);
        report.relays.insert(PeerId::random());
        assert_eq!(report.reachability(), Reachability::Relayed);
        report.hole_punched.insert(PeerId::random());
        assert_eq!(report.reachability(), Reachability::HolePunched);
        assert_eq!(report.hole_punched().count(), 1);
    }
}
