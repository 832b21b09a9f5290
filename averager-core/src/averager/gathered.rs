//! protocol 4.9: what a successful step returns: every member's all-gather payload, in group order.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::matchmaking::{GatherPayload, PeerMode};

/// The members of the group a step averaged in, each with what it gathered.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered {
    members: Vec<(String, GatherPayload)>,
}

impl Gathered {
    /// A result from `(endpoint, payload)` pairs in group order.
    pub(crate) fn new(members: Vec<(String, GatherPayload)>) -> Self {
        Gathered { members }
    }

    /// Number of members (this peer, CLIENTs and AUX peers included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members (never, for a formed group).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members' endpoints, in group order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(e, _)| e.as_str())
    }

    /// The mode a member took part in.
    pub fn mode(&self, endpoint: &str) -> Option<PeerMode> {
        self.members.iter().find(|(e, _)| e == endpoint).map(|(_, p)| p.mode)
    }

    /// Every member's gathered object as `T` (`None` for members that gathered nothing).
    ///
    /// # Errors
    /// [`Error::Protocol`](crate::Error::Protocol) when a member's payload is not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<HashMap<String, Option<T>>> {
        self.members.iter().map(|(e, p)| Ok((e.clone(), p.user::<T>()?))).collect()
    }
}
