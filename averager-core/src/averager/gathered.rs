//! protocol 4.9: what a successful step returns: every member's all-gather payload, in group order.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use super::report::StepReport;
use crate::error::Result;
use crate::matchmaking::{GatherPayload, PeerMode};

/// The members of the group a step averaged in, each with what it gathered.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered {
    members: Vec<(String, GatherPayload)>,
    report: StepReport,
}

impl Gathered {
    /// A result from `(endpoint, payload)` pairs in group order.
    pub(crate) fn new(members: Vec<(String, GatherPayload)>) -> Self {
        Gathered { members, report: StepReport::default() }
    }

    /// This result with the step's figures.
    pub(crate) fn with_report(mut self, report: StepReport) -> Self {
        self.report = report;
        self
    }

    /// How the step went: its group, timings and traffic (all zero for a result built by hand).
    pub fn report(&self) -> &StepReport {
        &self.report
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

    /// The bandwidth a member declared (configured, or measured when it configured none; `None`:
    /// it declared none, or is not a member).
    pub fn bandwidth(&self, endpoint: &str) -> Option<f64> {
        self.members.iter().find(|(e, _)| e == endpoint).and_then(|(_, p)| p.bandwidth)
    }

    /// Every member's gathered object as `T` (`None` for members that gathered nothing).
    ///
    /// # Errors
    /// [`Error::Protocol`](crate::Error::Protocol) when a member's payload is not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<HashMap<String, Option<T>>> {
        self.members.iter().map(|(e, p)| Ok((e.clone(), p.user::<T>()?))).collect()
    }
}
