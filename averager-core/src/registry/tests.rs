//! The registry's own promises: lookup by name, clear errors for unknown and duplicate names,
//! explicit registration, and decoding by the name written on the wire.

use std::sync::Arc;

use super::*;
use crate::compression::{CompressionInfo, CompressionType, NoCompression};
use crate::reduce::MeanReducer;

fn none_codec(_: &PluginConfig) -> Result<Arc<dyn Compression>> {
    Ok(Arc::new(NoCompression))
}

fn mean(_: &PluginConfig) -> Result<Arc<dyn Reducer>> {
    Ok(Arc::new(MeanReducer))
}

#[test]
fn an_empty_registry_knows_only_what_is_registered_explicitly() {
    let r = Registry::empty();
    assert!(r.codecs().is_empty());
    r.register_codec(CodecPlugin::new("raw", "test codec", module_path!(), none_codec));
    assert_eq!(r.codecs().iter().map(|i| i.name).collect::<Vec<_>>(), ["raw"]);
    assert_eq!(r.codec("raw").unwrap().name(), "none");
}

#[test]
fn an_unknown_name_is_an_error_that_lists_the_known_ones() {
    let r = Registry::empty();
    r.register_reducer(ReducerPlugin::new("mean", "test", module_path!(), mean));
    let err = r.reducer("median", &PluginConfig::default()).unwrap_err();
    match &err {
        Error::UnknownPlugin { kind, name, known } => {
            assert_eq!((*kind, name.as_str(), known.as_str()), ("reducer", "median", "mean"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("median"));
}

#[test]
fn two_plugins_with_one_name_are_an_error_naming_both() {
    let r = Registry::empty();
    r.register_codec(CodecPlugin::new("dup", "first one", "crate_a::codec", none_codec));
    r.register_codec(CodecPlugin::new("dup", "second one", "crate_b::codec", none_codec));
    let err = r.codec("dup").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::DuplicatePlugin { kind: "codec", .. }), "{err:?}");
    assert!(text.contains("crate_a::codec") && text.contains("crate_b::codec"), "{text}");
    assert!(r.check().is_err());
}

#[test]
fn the_global_registry_holds_the_core_plugins() {
    let r = Registry::global();
    r.check().unwrap();
    assert!(r.codecs().iter().any(|i| i.name == "none"));
    assert!(r.reducers().iter().any(|i| i.name == "mean"));
    assert!(r.transports().iter().any(|i| i.name == "mem"));
    assert!(r.dhts().iter().any(|i| i.name == "memory"));
}

#[test]
fn decode_finds_the_codec_by_name_then_by_enum() {
    let t = Tensor::from_f32(vec![3], vec![1.0, -2.0, 3.5]).unwrap();
    let mut wire = NoCompression.compress(&t.view(), &CompressionInfo::default()).unwrap();
    assert_eq!(Registry::global().decode(&wire).unwrap(), t);

    // An older or foreign peer may set only the enum.
    wire.codec.clear();
    assert_eq!(Registry::global().decode(&wire).unwrap(), t);

    // A name this process lacks is an error, not a panic.
    wire.codec = "acme-topk".into();
    assert!(matches!(Registry::global().decode(&wire), Err(Error::UnknownPlugin { .. })));

    // So is an enum id that does not exist.
    wire.codec.clear();
    wire.compression = 99;
    assert!(Registry::global().decode(&wire).is_err());
    assert_eq!(builtin_codec_name(CompressionType::Float16), "float16");
}

#[test]
fn plugin_config_parses_settings_and_defaults_on_null() {
    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct Settings {
        level: u32,
        name: String,
    }
    let parsed: Settings = PluginConfig::default().parse().unwrap();
    assert_eq!(parsed, Settings::default());
    let parsed: Settings = PluginConfig::new(serde_json::json!({"level": 3})).parse().unwrap();
    assert_eq!(parsed.level, 3);
    let err = PluginConfig::new(serde_json::json!({"level": "high"})).parse::<Settings>();
    assert!(matches!(err, Err(Error::Config(_))));
}
