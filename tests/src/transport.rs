//! PLACEHOLDER: the transport suite (being written).
