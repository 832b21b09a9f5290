//! PLACEHOLDER (helper fills this in).
/// Placeholder.
#[derive(Debug)]
pub struct Fault;
/// Placeholder.
#[derive(Debug)]
pub struct FaultPlan;
/// Placeholder.
#[derive(Debug)]
pub struct FaultyTransport;
/// Placeholder.
#[derive(Debug)]
pub struct Rpc;
