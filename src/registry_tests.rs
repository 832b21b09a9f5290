//! The registry holds exactly the plugins that the enabled features imply, each under a unique
//! name. This runs in the facade because only a binary that links the facade links every
//! enabled backend's records.

use std::collections::BTreeSet;

use crate::Registry;

/// (kind, name) of every plugin the enabled features should register.
fn expected() -> BTreeSet<(&'static str, &'static str)> {
    // The core's in-process plugins are always there; each backend adds its names under its
    // feature.
    let mut expected =
        BTreeSet::from([("codec", "none"), ("reducer", "mean"), ("transport", "mem"), ("dht", "memory")]);
    #[cfg(feature = "compression")]
    expected.extend([("codec", "float16"), ("codec", "uniform8")]);
    expected
}

fn registered() -> Vec<(&'static str, &'static str)> {
    let r = Registry::global();
    let kinds =
        [("codec", r.codecs()), ("reducer", r.reducers()), ("transport", r.transports()), ("dht", r.dhts())];
    kinds.into_iter().flat_map(|(kind, infos)| infos.into_iter().map(move |i| (kind, i.name))).collect()
}

#[test]
fn registry_holds_exactly_the_enabled_plugins() {
    let registered = registered();
    let unique: BTreeSet<_> = registered.iter().copied().collect();
    assert_eq!(unique.len(), registered.len(), "a name is registered twice: {registered:?}");
    assert_eq!(unique, expected());
    Registry::global().check().expect("no duplicate names");
}

#[test]
fn every_registered_plugin_can_be_built_by_name() {
    let r = Registry::global();
    for info in r.codecs() {
        assert_eq!(r.codec(info.name).unwrap().name(), info.name);
    }
    for info in r.reducers() {
        assert_eq!(r.reducer(info.name, &Default::default()).unwrap().name(), info.name);
    }
}
