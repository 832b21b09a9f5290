//! Bad input: a message on stderr and a non-zero exit, never a panic.

use std::time::Duration;

use crate::common::run;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `args`, which must fail with a message containing `expect`.
fn fails_with(args: &[&str], expect: &str) {
    let out = run(args, LIMIT);
    assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
    assert!(out.stderr.contains(expect), "{args:?}: stderr lacks {expect:?}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{args:?} panicked: {out:?}");
}

#[test]
fn bad_flags_and_values_are_messages() {
    fails_with(&["demo", "--no-such-flag"], "unexpected argument");
    fails_with(&["demo", "--peers", "many"], "invalid value");
    fails_with(&["demo", "--peers", "1"], "at least 2 peers");
    fails_with(&["demo", "--group-size", "3"], "power of two");
    fails_with(&["demo", "--size", "3"], "at least 4 bytes");
    fails_with(&["demo", "--floats", "10", "--size", "1MB"], "cannot be used with");
    fails_with(&["demo", "--timeout=0", "--dht", "memory"], "positive number of seconds");
    fails_with(&["demo", "--processes", "--transport", "memory"], "networked transport");
    fails_with(&["demo", "--processes", "--dht", "memory"], "--dht kad");
    // Bits that leave a peer without a full group are refused at once, with the way out.
    fails_with(&["demo", "--peers", "3", "--bits", "0", "--dht", "memory"], "leave out --bits");
    fails_with(&["demo", "--peers", "8", "--bits", "3", "--dht", "memory"], "--bits 2 or fewer");
    fails_with(&["bench", "--compression", "no-such-codec"], "no-such-codec");
    fails_with(&["bench", "--rounds", "0"], "--rounds");
    fails_with(&["node", "--transport", "memory"], "--transport grpc");
    fails_with(&["frobnicate"], "unrecognized subcommand");
}

#[test]
fn a_bad_config_file_is_a_message() {
    let dir = std::env::temp_dir().join(format!("averager-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.toml");
    fails_with(&["node", "--config", missing.to_str().unwrap()], "missing.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "no_such_key = 1\n").unwrap();
    fails_with(&["node", "--config", bad.to_str().unwrap()], "no_such_key");
    let invalid = dir.join("invalid.toml");
    std::fs::write(&invalid, "prefix = \"a.b\"\n").unwrap();
    fails_with(&["node", "--config", invalid.to_str().unwrap()], "prefix");
    let tensors = dir.join("odd.f32");
    std::fs::write(&tensors, [0u8; 6]).unwrap();
    fails_with(&["node", "--tensors", tensors.to_str().unwrap()], "multiple of 4");
    std::fs::remove_dir_all(&dir).unwrap();
}
