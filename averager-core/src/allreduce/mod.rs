//! SPEC 4: the all-reduce. For now, the part reducer (SPEC 4.6) that every reducer runs under.

mod part_reducer;

pub use part_reducer::PartReducer;
