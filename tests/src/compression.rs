//! PLACEHOLDER: the compression suite (being written).
