//! The reducer conformance suite on every reducer of this crate, built by name through the
//! registry as an averager builds them. None is a weighted mean, so the cases about weights and
//! dtypes of one are reported as ignored.

use std::sync::Arc;

use averager_core::Registry;
use averager_core::reduce::Reducer;
use averager_core::registry::PluginConfig;
use averager_reducers::{CenteredClipReducer, MedianReducer, TrimmedMeanReducer};

fn by_name(name: &str, settings: serde_json::Value) -> Arc<dyn Reducer> {
    Registry::global().reducer(name, &PluginConfig::new(settings)).unwrap()
}

averager_conformance::reducer_suite!(median, || by_name(MedianReducer::NAME, serde_json::Value::Null), lacks: [weighted_mean]);
averager_conformance::reducer_suite!(trimmed_mean, || by_name(
    TrimmedMeanReducer::NAME,
    serde_json::json!({ "trim": 1 })
), lacks: [weighted_mean]);
averager_conformance::reducer_suite!(trimmed_mean_2, || by_name(
    TrimmedMeanReducer::NAME,
    serde_json::json!({ "trim": 2 })
), lacks: [weighted_mean]);
averager_conformance::reducer_suite!(centered_clip, || by_name(
    CenteredClipReducer::NAME,
    serde_json::Value::Null
), lacks: [weighted_mean]);
averager_conformance::reducer_suite!(centered_clip_tight, || by_name(
    CenteredClipReducer::NAME,
    serde_json::json!({ "tau": 0.01, "iterations": 50 })
), lacks: [weighted_mean]);
