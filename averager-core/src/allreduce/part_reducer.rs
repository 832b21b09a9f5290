//! PLACEHOLDER (helper fills this in).
/// Placeholder.
#[derive(Debug)]
pub struct PartReducer;
