//! PLACEHOLDER: the reducer suite (being written).
