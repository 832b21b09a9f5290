//! The registry holds exactly the plugins that the enabled features imply, each under a unique
//! name. This runs in the facade because only a binary that links the facade links every
//! enabled backend's records.

use std::collections::BTreeSet;

use crate::Registry;

/// (kind, name) of every plugin the enabled features should register.
fn expected() -> BTreeSet<(&'static str, String)> {
    // The core's in-process plugins are always there; each backend adds its names under its
    // feature.
    let mut names = vec![("codec", "none"), ("reducer", "mean"), ("transport", "mem"), ("dht", "memory")];
    if cfg!(feature = "grpc") {
        names.push(("transport", "grpc"));
    }
    if cfg!(feature = "quic") {
        names.push(("transport", "quic"));
    }
    if cfg!(feature = "tcp") {
        names.push(("transport", "tcp"));
    }
    if cfg!(feature = "libp2p") {
        names.push(("transport", "libp2p"));
    }
    if cfg!(feature = "kad") {
        names.push(("dht", "kad"));
    }
    if cfg!(feature = "reducers") {
        names.extend(["centered-clip", "trimmed-mean", "median"].map(|r| ("reducer", r)));
    }
    if cfg!(feature = "compression") {
        let codecs = ["float16", "meanstd16", "uniform8", "quantile8", "blockwise8"];
        names.extend(
            codecs.iter().chain(&["size-adaptive", "role-adaptive", "per-tensor"]).map(|c| ("codec", *c)),
        );
    }
    let mut expected: BTreeSet<(&'static str, String)> =
        names.into_iter().map(|(k, n)| (k, n.to_string())).collect();
    for (wrapper, enabled) in [("zstd", cfg!(feature = "zstd")), ("lz4", cfg!(feature = "lz4"))] {
        if enabled {
            expected.insert(("codec", wrapper.to_string()));
            for inner in ["none", "float16", "meanstd16", "uniform8", "quantile8", "blockwise8"] {
                expected.insert(("codec", format!("{wrapper}+{inner}")));
            }
        }
    }
    expected
}

fn registered() -> Vec<(&'static str, String)> {
    let r = Registry::global();
    let kinds =
        [("codec", r.codecs()), ("reducer", r.reducers()), ("transport", r.transports()), ("dht", r.dhts())];
    kinds
        .into_iter()
        .flat_map(|(kind, infos)| infos.into_iter().map(move |i| (kind, i.name.to_string())))
        .collect()
}

#[test]
fn registry_holds_exactly_the_enabled_plugins() {
    let registered = registered();
    let unique: BTreeSet<_> = registered.iter().cloned().collect();
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
