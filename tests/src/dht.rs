//! PLACEHOLDER: the dht suite (being written).
