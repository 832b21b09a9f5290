//! The [`Dht`] conformance suite: one case per promise of protocol 2.3 and of the trait's `# Behavior`.
//!
//! A backend runs the whole suite with one line:
//!
//! ```
//! # use std::sync::Arc;
//! # use averager_core::Dht;
//! # use averager_core::dht::MemoryDht as MyDht;
//! averager_conformance::dht_suite!(my_dht, || async { vec![Arc::new(MyDht::new()) as Arc<dyn Dht>] });
//! # fn main() {}
//! ```
//!
//! The factory returns a *swarm*: one or more nodes that share records (for a distributed backend,
//! already connected to each other). Cases store through one node and read through another, so a
//! swarm of several nodes checks replication as well as the record rules; reads that cross nodes
//! use `latest = true`. Every case builds its own swarm (each `#[test]` has its own runtime) and
//! uses fresh random keys, so cases never see each other's records even if the backend keeps
//! global state.
//!
//! The expiry case needs real time to pass (about half a second); every other case is quick.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use averager_core::dht::DhtDictionary;
use averager_core::time::{DhtTime, dht_now, next_after, until};
use averager_core::{Dht, Error};
use bytes::Bytes;
use futures::StreamExt;
use rand::RngCore;

use crate::{Failure, Outcome, ensure};

/// Builds the swarm one case runs against: one or more nodes of one DHT, sharing records.
///
/// Any `Fn() -> impl Future<Output = Vec<Arc<dyn Dht>>>` closure is a factory. It is called once
/// per case, inside that case's tokio runtime, and should return only when the nodes can reach
/// each other.
pub trait DhtFactory {
    /// Starts a fresh swarm of at least one node.
    fn swarm(&self) -> impl Future<Output = Vec<Arc<dyn Dht>>>;
}

impl<F, Fut> DhtFactory for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Arc<dyn Dht>>>,
{
    fn swarm(&self) -> impl Future<Output = Vec<Arc<dyn Dht>>> {
        self()
    }
}

/// The largest value the large-value case sends, so a backend that accepts huge values does not
/// make the suite slow or memory-hungry.
pub const LARGE_VALUE_CAP: usize = 4 << 20;

/// How many subkeys the many-subkeys case writes under one key (fewer if the backend holds fewer).
pub const MANY_SUBKEYS: usize = 1000;

/// The subkey-limit case runs only when the limit is at most this, since it fills a key to the limit.
pub const SUBKEY_LIMIT_CAP: usize = 1000;

/// How many tasks the concurrent-writer cases run at once.
pub const CONCURRENT_WRITERS: usize = 32;

/// Lists every case once, for [`dht_suite!`](crate::dht_suite) and [`run_all`]: it calls the named
/// macro of this crate with the given arguments followed by `[case, ...]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __dht_cases {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)* [
            store_then_get_returns_value_and_expiration,
            missing_key_is_empty,
            subkeys_are_independent,
            later_expiration_replaces_the_entry,
            earlier_expiration_is_refused,
            equal_expiration_is_refused,
            past_expiration_is_refused,
            entries_expire,
            withdrawal_overrides_declaration,
            keys_are_independent,
            values_round_trip_byte_exact,
            largest_value_round_trips_and_one_more_byte_is_an_error,
            many_subkeys_under_one_key,
            subkey_limit_refuses_new_subkeys if small_subkey_limit,
            concurrent_writers_of_different_subkeys_all_land,
            concurrent_writers_of_one_subkey_leave_the_latest,
            non_finite_expiration_is_an_error,
            latest_and_cached_reads_see_own_store,
        ] }
    };
}

/// Expands to a module `$name` with one `#[test]` per case of the [`Dht`] suite.
///
/// `$factory` is an expression evaluated inside each test, in the test module (which imports
/// `super::*`), giving a [`DhtFactory`]:
///
/// ```
/// use std::sync::Arc;
/// use averager_core::Dht;
/// use averager_core::dht::MemoryDht;
///
/// // A swarm of three nodes sharing one in-process table.
/// averager_conformance::dht_suite!(memory_swarm, || async {
///     let table = MemoryDht::new();
///     (0..3).map(|_| Arc::new(table.clone()) as Arc<dyn Dht>).collect::<Vec<_>>()
/// });
/// # fn main() {}
/// ```
#[macro_export]
///
/// The subkey-limit case fills a key to `max_subkeys_per_key`, so it needs a limit of at most
/// [`SUBKEY_LIMIT_CAP`](crate::dht::SUBKEY_LIMIT_CAP) (`small_subkey_limit`); a DHT with a larger one adds
/// `lacks: [small_subkey_limit]`, and `cargo test` reports the case as ignored.
macro_rules! dht_suite {
    ($name:ident, $factory:expr $(, lacks: [$($lack:ident),* $(,)?])? $(,)?) => {
        $crate::__dht_cases! { __suite_tests! { dht, $name, $factory, [$($($lack),*)?], } }
    };
}

/// Whether the DHT declares `requirement` (only `small_subkey_limit` is known).
///
/// # Errors
/// A [`Failure`] for another name, or a swarm that does not start.
pub async fn declares(factory: &impl DhtFactory, requirement: &str) -> Result<bool, Failure> {
    match requirement {
        "small_subkey_limit" => {
            let swarm = Swarm::start(factory).await?;
            Ok(swarm.node(0).capabilities().max_subkeys_per_key <= SUBKEY_LIMIT_CAP)
        }
        other => Err(crate::unknown_requirement("dht", other, &["small_subkey_limit"])),
    }
}

/// Runs every case in turn on the current runtime, returning each case's name and outcome.
pub async fn run_all(factory: &impl DhtFactory) -> Vec<(&'static str, Outcome)> {
    crate::__dht_cases! { __suite_run_all! { dht, factory, } }
}

/// The nodes of one case's swarm, with calls that name the node and key when they fail.
struct Swarm {
    nodes: Vec<Arc<dyn Dht>>,
}

impl Swarm {
    async fn start(factory: &impl DhtFactory) -> Result<Self, Failure> {
        let nodes = factory.swarm().await;
        ensure!(!nodes.is_empty(), "the factory returned a swarm of no nodes");
        Ok(Swarm { nodes })
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn last(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Node `i`, wrapping around, so cases can spread calls over any swarm size.
    fn node(&self, i: usize) -> &Arc<dyn Dht> {
        &self.nodes[i % self.nodes.len()]
    }

    async fn store(
        &self,
        i: usize,
        key: &str,
        subkey: &[u8],
        value: Bytes,
        expiration: DhtTime,
    ) -> Result<bool, Failure> {
        self.node(i).store(key, subkey, value, expiration).await.map_err(|e| {
            Failure::new(format!(
                "store({key:?}, {}, expiration {expiration}) through node {} failed: {e}",
                show(subkey),
                i % self.len()
            ))
        })
    }

    /// Reads through node `i` with `latest = true`, as every cross-node read must.
    async fn get(&self, i: usize, key: &str) -> Result<DhtDictionary, Failure> {
        self.get_with(i, key, true).await
    }

    async fn get_with(&self, i: usize, key: &str, latest: bool) -> Result<DhtDictionary, Failure> {
        self.node(i).get(key, latest).await.map_err(|e| {
            Failure::new(format!(
                "get({key:?}, latest = {latest}) through node {} failed: {e}",
                i % self.len()
            ))
        })
    }
}

/// A key no other case, run or process uses.
fn fresh_key(case: &str) -> String {
    format!("conformance.{case}.{:016x}", rand::random::<u64>())
}

/// Bytes as a readable literal (`b"k1"`, `b"\\xff"`) for failure messages.
fn show(bytes: &[u8]) -> String {
    format!("{:?}", Bytes::copy_from_slice(bytes))
}

fn random_bytes(len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    rand::rng().fill_bytes(&mut buf);
    Bytes::from(buf)
}

/// Checks that `dict` holds exactly `value` expiring at `expiration` under `subkey`.
fn expect_entry(
    dict: &DhtDictionary,
    subkey: &[u8],
    value: &[u8],
    expiration: DhtTime,
    context: &str,
) -> Outcome {
    let Some(entry) = dict.get(subkey) else {
        return Err(Failure::new(format!(
            "{context}: subkey {} is missing (the record holds {} subkeys)",
            show(subkey),
            dict.len()
        )));
    };
    ensure!(
        entry.value == value,
        "{context}: subkey {} holds a value of {} bytes that differs from the {} bytes expected{}",
        show(subkey),
        entry.value.len(),
        value.len(),
        if value.len() <= 64 {
            format!(" ({:?} instead of {})", entry.value, show(value))
        } else {
            String::new()
        }
    );
    ensure!(
        entry.expiration.to_bits() == expiration.to_bits(),
        "{context}: subkey {} expires at {} instead of exactly {expiration}",
        show(subkey),
        entry.expiration
    );
    Ok(())
}

/// Waits, polling the clock, until DHT time is past `t`; fails if the clock stalls.
async fn wait_until_past(t: DhtTime) -> Outcome {
    // Bounded: the clock must pass `t` within a few seconds of the planned wait.
    for _ in 0..500 {
        if dht_now() > t {
            return Ok(());
        }
        let left = until(t).unwrap_or(Duration::ZERO);
        tokio::time::sleep(left.min(Duration::from_millis(10)) + Duration::from_millis(1)).await;
    }
    Err(Failure::new(format!("DHT time did not pass {t} (now {})", dht_now())))
}

/// A store returns `true`, and every node then reads back exactly the stored value and expiration,
/// and nothing else under that key.
pub async fn store_then_get_returns_value_and_expiration(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("store_then_get");
    let exp = dht_now() + 30.0;
    let value = Bytes::from_static(b"\xc3 a value");
    ensure!(
        swarm.store(0, &key, b"subkey", value.clone(), exp).await?,
        "the first store of a subkey returned false"
    );
    for i in (0..swarm.len()).rev() {
        let dict = swarm.get(i, &key).await?;
        expect_entry(&dict, b"subkey", &value, exp, &format!("read through node {i}"))?;
        ensure!(dict.len() == 1, "read through node {i}: {} subkeys instead of 1", dict.len());
    }
    Ok(())
}

/// A key that was never stored reads as an empty map (not an error), with or without `latest`.
pub async fn missing_key_is_empty(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("missing");
    for i in 0..swarm.len() {
        for latest in [true, false] {
            let dict = swarm.get_with(i, &key, latest).await?;
            ensure!(
                dict.is_empty(),
                "node {i} (latest = {latest}) returned {} subkeys for a key never stored",
                dict.len()
            );
        }
    }
    Ok(())
}

/// protocol 10.1 scenario 2: subkeys `k1` (now + 10) and `k2` (now + 20) both read back with their own
/// expirations; re-storing `k2` with an earlier expiration is refused, with a later one accepted,
/// and neither touches `k1`.
pub async fn subkeys_are_independent(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("subkeys");
    let now = dht_now();
    let (e1, e2) = (now + 10.0, now + 20.0);
    ensure!(swarm.store(0, &key, b"k1", Bytes::from_static(b"v1"), e1).await?, "storing k1 returned false");
    ensure!(swarm.store(1, &key, b"k2", Bytes::from_static(b"v2"), e2).await?, "storing k2 returned false");
    let dict = swarm.get(swarm.last(), &key).await?;
    ensure!(dict.len() == 2, "{} subkeys read back instead of 2", dict.len());
    expect_entry(&dict, b"k1", b"v1", e1, "after storing k1 and k2")?;
    expect_entry(&dict, b"k2", b"v2", e2, "after storing k1 and k2")?;

    ensure!(
        !swarm.store(2, &key, b"k2", Bytes::from_static(b"v2-early"), now + 15.0).await?,
        "re-storing k2 with an earlier expiration returned true"
    );
    let e2_later = now + 25.0;
    ensure!(
        swarm.store(3, &key, b"k2", Bytes::from_static(b"v2-late"), e2_later).await?,
        "re-storing k2 with a later expiration returned false"
    );
    let dict = swarm.get(4, &key).await?;
    ensure!(dict.len() == 2, "{} subkeys read back instead of 2", dict.len());
    expect_entry(&dict, b"k1", b"v1", e1, "k1 after re-storing k2")?;
    expect_entry(&dict, b"k2", b"v2-late", e2_later, "k2 after re-storing it later")?;
    Ok(())
}

/// Re-storing a subkey with a later expiration returns `true` and replaces value and expiration.
pub async fn later_expiration_replaces_the_entry(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("later");
    let now = dht_now();
    ensure!(swarm.store(0, &key, b"s", Bytes::from_static(b"old"), now + 10.0).await?, "first store false");
    ensure!(
        swarm.store(swarm.last(), &key, b"s", Bytes::from_static(b"new"), now + 20.0).await?,
        "a store with a later expiration returned false"
    );
    let dict = swarm.get(1, &key).await?;
    expect_entry(&dict, b"s", b"new", now + 20.0, "after a later store")?;
    ensure!(dict.len() == 1, "{} subkeys instead of 1", dict.len());
    Ok(())
}

/// Re-storing a subkey with an earlier expiration returns `false` and leaves the old entry.
pub async fn earlier_expiration_is_refused(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("earlier");
    let now = dht_now();
    ensure!(swarm.store(0, &key, b"s", Bytes::from_static(b"old"), now + 20.0).await?, "first store false");
    ensure!(
        !swarm.store(swarm.last(), &key, b"s", Bytes::from_static(b"new"), now + 10.0).await?,
        "a store with an earlier expiration returned true"
    );
    let dict = swarm.get(1, &key).await?;
    expect_entry(&dict, b"s", b"old", now + 20.0, "after a refused earlier store")
}

/// Re-storing a subkey with the same expiration returns `false` and keeps the old value (a tie
/// keeps what is stored).
pub async fn equal_expiration_is_refused(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("equal");
    let exp = dht_now() + 20.0;
    ensure!(swarm.store(0, &key, b"s", Bytes::from_static(b"old"), exp).await?, "first store false");
    ensure!(
        !swarm.store(swarm.last(), &key, b"s", Bytes::from_static(b"new"), exp).await?,
        "a store with an equal expiration returned true"
    );
    let dict = swarm.get(1, &key).await?;
    expect_entry(&dict, b"s", b"old", exp, "after a refused equal store")
}

/// A store whose expiration is not after the current DHT time returns `false` and stores nothing.
pub async fn past_expiration_is_refused(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("past");
    ensure!(
        !swarm.store(0, &key, b"long-ago", Bytes::from_static(b"v"), dht_now() - 60.0).await?,
        "a store expiring a minute ago returned true"
    );
    // By the time the backend looks at the clock, "now" is no longer after it.
    ensure!(
        !swarm.store(swarm.last(), &key, b"just-now", Bytes::from_static(b"v"), dht_now()).await?,
        "a store expiring at the current time returned true"
    );
    ensure!(
        !swarm.store(0, &key, b"epoch", Bytes::from_static(b"v"), 0.0).await?,
        "a store expiring at time 0 returned true"
    );
    for i in 0..swarm.len() {
        let dict = swarm.get(i, &key).await?;
        ensure!(dict.is_empty(), "node {i} shows {} entries stored with past expirations", dict.len());
    }
    Ok(())
}

/// An entry disappears once DHT time passes its expiration (stored at now + 0.5 s, read after the
/// clock has passed that), with or without `latest`; storing the same subkey again then succeeds.
pub async fn entries_expire(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("expire");
    let exp = dht_now() + 0.5;
    ensure!(swarm.store(0, &key, b"s", Bytes::from_static(b"short"), exp).await?, "first store false");
    let dict = swarm.get(swarm.last(), &key).await?;
    expect_entry(&dict, b"s", b"short", exp, "before the expiration")?;

    wait_until_past(exp).await?;
    for i in 0..swarm.len() {
        for latest in [true, false] {
            let dict = swarm.get_with(i, &key, latest).await?;
            ensure!(
                !dict.contains_key(b"s".as_slice()),
                "node {i} (latest = {latest}) still returns the entry {:?} after its expiration {exp} \
                 (now {})",
                dict.get(b"s".as_slice()),
                dht_now()
            );
        }
    }

    let again = dht_now() + 30.0;
    ensure!(
        swarm.store(swarm.last(), &key, b"s", Bytes::from_static(b"again"), again).await?,
        "storing the subkey again after its entry expired returned false"
    );
    let dict = swarm.get(0, &key).await?;
    expect_entry(&dict, b"s", b"again", again, "after storing an expired subkey again")
}

/// protocol 3.2's withdrawal: `true` stored at `E`, then `false` at `next_after(E)`, reads back as
/// `false` expiring at `next_after(E)`; the declaration at `E` cannot come back, a later one can.
pub async fn withdrawal_overrides_declaration(factory: &impl DhtFactory) -> Outcome {
    const TRUE: &[u8] = b"\xc3";
    const FALSE: &[u8] = b"\xc2";
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("withdraw");
    let peer = b"\x12\x20peer-id-bytes";
    let declared = dht_now() + 30.0;
    let withdrawn = next_after(declared);
    ensure!(
        swarm.store(0, &key, peer, Bytes::from_static(TRUE), declared).await?,
        "declaring returned false"
    );
    ensure!(
        swarm.store(swarm.last(), &key, peer, Bytes::from_static(FALSE), withdrawn).await?,
        "withdrawing at next_after(E) returned false"
    );
    let dict = swarm.get(1, &key).await?;
    expect_entry(&dict, peer, FALSE, withdrawn, "after the withdrawal")?;

    ensure!(
        !swarm.store(2, &key, peer, Bytes::from_static(TRUE), declared).await?,
        "re-declaring at E after the withdrawal at next_after(E) returned true"
    );
    let redeclared = declared + 5.0;
    ensure!(
        swarm.store(3, &key, peer, Bytes::from_static(TRUE), redeclared).await?,
        "a new declaration with a later expiration returned false"
    );
    let dict = swarm.get(0, &key).await?;
    expect_entry(&dict, peer, TRUE, redeclared, "after a new declaration")
}

/// Records under different keys (including one key that is a prefix of another, and non-ASCII
/// keys) do not see or refuse each other.
pub async fn keys_are_independent(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let base = fresh_key("keys");
    let keys = [base.clone(), format!("{base}.0b0110"), format!("{base}x"), format!("{base}.ключ-🔑")];
    let now = dht_now();
    // Later keys get earlier expirations: a backend that mixed keys up would refuse them.
    for (i, key) in keys.iter().enumerate() {
        let exp = now + 40.0 - i as f64;
        ensure!(
            swarm.store(i, key, b"same-subkey", Bytes::from(key.clone()), exp).await?,
            "storing under {key:?} returned false"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let dict = swarm.get(i + 1, key).await?;
        ensure!(dict.len() == 1, "{key:?} holds {} subkeys instead of 1", dict.len());
        expect_entry(&dict, b"same-subkey", key.as_bytes(), now + 40.0 - i as f64, &format!("key {key:?}"))?;
    }
    Ok(())
}

/// Values and subkeys are arbitrary bytes and round-trip exactly: the empty value and the empty
/// subkey, every byte value, NUL and 0xff, and random binary.
pub async fn values_round_trip_byte_exact(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("bytes");
    let exp = dht_now() + 30.0;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let items: Vec<(Bytes, Bytes)> = vec![
        (Bytes::from_static(b"empty-value"), Bytes::new()),
        (Bytes::new(), Bytes::from_static(b"under the empty subkey")),
        (Bytes::from_static(b"\x00"), Bytes::from_static(b"\x00")),
        (Bytes::from_static(b"\xff\x00\xfe"), Bytes::from_static(b"\xff\xff\x00\x00")),
        (Bytes::from_static(b"all-bytes"), Bytes::from(all_bytes.clone())),
        (Bytes::from(all_bytes.iter().rev().copied().collect::<Vec<u8>>()), Bytes::from_static(b"rev")),
        (Bytes::from_static(b"msgpack-nil"), Bytes::from_static(b"\xc0")),
        (Bytes::from_static(b"random"), random_bytes(1000)),
        (random_bytes(20), random_bytes(33)),
    ];
    for (i, (subkey, value)) in items.iter().enumerate() {
        ensure!(
            swarm.store(i, &key, subkey, value.clone(), exp).await?,
            "storing subkey {} returned false",
            show(subkey)
        );
    }
    for i in [swarm.last(), 0] {
        let dict = swarm.get(i, &key).await?;
        ensure!(dict.len() == items.len(), "{} subkeys read back instead of {}", dict.len(), items.len());
        for (subkey, value) in &items {
            expect_entry(&dict, subkey, value, exp, &format!("read through node {i}"))?;
        }
    }
    Ok(())
}

/// A value of exactly `capabilities().max_value_bytes` round-trips and one byte more is an
/// [`Error::Dht`] that stores nothing. Values are capped at [`LARGE_VALUE_CAP`] (4 MiB): above it
/// only a 4 MiB value is checked and the over-limit store is not attempted.
pub async fn largest_value_round_trips_and_one_more_byte_is_an_error(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("large");
    let max = swarm.node(0).capabilities().max_value_bytes;
    let exp = dht_now() + 30.0;
    let value = random_bytes(max.min(LARGE_VALUE_CAP));
    ensure!(
        swarm.store(0, &key, b"largest", value.clone(), exp).await?,
        "storing a value of {} bytes (max_value_bytes {max}) returned false",
        value.len()
    );
    let dict = swarm.get(swarm.last(), &key).await?;
    expect_entry(&dict, b"largest", &value, exp, "the largest value")?;

    if max < LARGE_VALUE_CAP {
        let too_big = random_bytes(max + 1);
        match swarm.node(swarm.last()).store(&key, b"too-big", too_big, exp).await {
            Err(Error::Dht(_)) => {}
            Err(other) => {
                return Err(Failure::new(format!(
                    "a value of max_value_bytes + 1 = {} bytes failed with {other:?}, not Error::Dht",
                    max + 1
                )));
            }
            Ok(stored) => {
                return Err(Failure::new(format!(
                    "a value of max_value_bytes + 1 = {} bytes returned Ok({stored}) instead of an error",
                    max + 1
                )));
            }
        }
        let dict = swarm.get(0, &key).await?;
        ensure!(!dict.contains_key(b"too-big".as_slice()), "the refused over-limit value was stored");
    }
    Ok(())
}

/// [`MANY_SUBKEYS`] (1000) subkeys under one key, or `max_subkeys_per_key` if smaller, written
/// through every node, all read back.
pub async fn many_subkeys_under_one_key(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("many");
    let n = MANY_SUBKEYS.min(swarm.node(0).capabilities().max_subkeys_per_key);
    let exp = dht_now() + 60.0;
    let swarm = &swarm;
    let key = &key;
    let results: Vec<Result<bool, Failure>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let subkey = (i as u32).to_be_bytes();
            swarm.store(i, key, &subkey, Bytes::from(format!("value {i}")), exp).await
        })
        .buffer_unordered(CONCURRENT_WRITERS)
        .collect()
        .await;
    for (i, stored) in results.into_iter().enumerate() {
        ensure!(stored?, "a store of a new subkey returned false ({i} of {n}; limit not reached)");
    }
    for node in [swarm.last(), 0] {
        let dict = swarm.get(node, key).await?;
        ensure!(dict.len() == n, "node {node} reads {} subkeys instead of {n}", dict.len());
        for i in 0..n {
            let subkey = (i as u32).to_be_bytes();
            expect_entry(&dict, &subkey, format!("value {i}").as_bytes(), exp, &format!("node {node}"))?;
        }
    }
    Ok(())
}

/// With a key holding `max_subkeys_per_key` live subkeys, a new subkey returns `false` and is not
/// stored, while an existing subkey still accepts a later expiration. Runs only when the limit is
/// at most [`SUBKEY_LIMIT_CAP`] (1000): needs `small_subkey_limit`.
pub async fn subkey_limit_refuses_new_subkeys(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let limit = swarm.node(0).capabilities().max_subkeys_per_key;
    if limit > SUBKEY_LIMIT_CAP {
        return Ok(());
    }
    let key = fresh_key("limit");
    let exp = dht_now() + 60.0;
    for i in 0..limit {
        let subkey = (i as u32).to_be_bytes();
        ensure!(
            swarm.store(i, &key, &subkey, Bytes::from_static(b"v"), exp).await?,
            "new subkey {i} of {limit} returned false before the limit"
        );
    }
    ensure!(
        !swarm.store(swarm.last(), &key, b"one too many", Bytes::from_static(b"v"), exp).await?,
        "a new subkey beyond max_subkeys_per_key = {limit} returned true"
    );
    if limit > 0 {
        let first = 0u32.to_be_bytes();
        ensure!(
            swarm.store(1, &key, &first, Bytes::from_static(b"updated"), exp + 1.0).await?,
            "updating an existing subkey of a full key returned false"
        );
    }
    let dict = swarm.get(0, &key).await?;
    ensure!(dict.len() == limit, "the full key reads {} subkeys instead of {limit}", dict.len());
    ensure!(!dict.contains_key(b"one too many".as_slice()), "the refused subkey was stored");
    if limit > 0 {
        expect_entry(&dict, &0u32.to_be_bytes(), b"updated", exp + 1.0, "the updated subkey")?;
    }
    Ok(())
}

/// [`CONCURRENT_WRITERS`] (32) tasks storing different subkeys of one key at once, through
/// different nodes, all return `true` and all subkeys read back.
pub async fn concurrent_writers_of_different_subkeys_all_land(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("concurrent_subkeys");
    let exp = dht_now() + 30.0;
    let tasks: Vec<_> = (0..CONCURRENT_WRITERS)
        .map(|i| {
            let node = Arc::clone(swarm.node(i));
            let key = key.clone();
            tokio::spawn(async move {
                node.store(&key, format!("writer {i}").as_bytes(), Bytes::from(vec![i as u8; i + 1]), exp)
                    .await
            })
        })
        .collect();
    for (i, task) in futures::future::join_all(tasks).await.into_iter().enumerate() {
        match task {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(Failure::new(format!("concurrent writer {i} was refused"))),
            Ok(Err(e)) => return Err(Failure::new(format!("concurrent writer {i} failed: {e}"))),
            Err(e) => return Err(Failure::new(format!("concurrent writer {i} panicked: {e}"))),
        }
    }
    for node in (0..swarm.len()).rev() {
        let dict = swarm.get(node, &key).await?;
        ensure!(
            dict.len() == CONCURRENT_WRITERS,
            "node {node} reads {} subkeys after {CONCURRENT_WRITERS} concurrent writers",
            dict.len()
        );
        for i in 0..CONCURRENT_WRITERS {
            let subkey = format!("writer {i}");
            expect_entry(&dict, subkey.as_bytes(), &vec![i as u8; i + 1], exp, &format!("node {node}"))?;
        }
    }
    Ok(())
}

/// [`CONCURRENT_WRITERS`] (32) tasks storing one subkey at once with different expirations,
/// through different nodes, leave the entry with the latest expiration; its store returned `true`.
pub async fn concurrent_writers_of_one_subkey_leave_the_latest(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("concurrent_one");
    let base = dht_now() + 30.0;
    // A permutation, so the writer with the latest expiration is not simply the last one spawned.
    let order: Vec<usize> = (0..CONCURRENT_WRITERS).map(|i| (i * 7 + 3) % CONCURRENT_WRITERS).collect();
    let tasks: Vec<_> = order
        .iter()
        .enumerate()
        .map(|(task, &rank)| {
            let node = Arc::clone(swarm.node(task));
            let key = key.clone();
            tokio::spawn(async move {
                node.store(&key, b"contested", Bytes::from(vec![rank as u8]), base + rank as f64).await
            })
        })
        .collect();
    let latest = CONCURRENT_WRITERS - 1;
    for (task, result) in futures::future::join_all(tasks).await.into_iter().enumerate() {
        let rank = order[task];
        match result {
            Ok(Ok(stored)) => {
                ensure!(stored || rank != latest, "the store with the latest expiration was refused")
            }
            Ok(Err(e)) => return Err(Failure::new(format!("concurrent writer {task} failed: {e}"))),
            Err(e) => return Err(Failure::new(format!("concurrent writer {task} panicked: {e}"))),
        }
    }
    for node in 0..swarm.len() {
        let dict = swarm.get(node, &key).await?;
        expect_entry(
            &dict,
            b"contested",
            &[latest as u8],
            base + latest as f64,
            &format!("node {node} after {CONCURRENT_WRITERS} concurrent writers of one subkey"),
        )?;
    }
    Ok(())
}

/// A NaN or infinite expiration is an [`Error::Dht`] and stores nothing.
pub async fn non_finite_expiration_is_an_error(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("non_finite");
    for (i, exp) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY].into_iter().enumerate() {
        match swarm.node(i).store(&key, b"s", Bytes::from_static(b"v"), exp).await {
            Err(Error::Dht(_)) => {}
            Err(other) => {
                return Err(Failure::new(format!("expiration {exp} failed with {other:?}, not Error::Dht")));
            }
            Ok(stored) => {
                return Err(Failure::new(format!(
                    "expiration {exp} returned Ok({stored}) instead of an error"
                )));
            }
        }
    }
    let dict = swarm.get(swarm.last(), &key).await?;
    ensure!(dict.is_empty(), "stores with non-finite expirations left {} entries", dict.len());
    Ok(())
}

/// Through every node, a read with `latest = true` and one with `latest = false` both see a store
/// just made through that same node.
pub async fn latest_and_cached_reads_see_own_store(factory: &impl DhtFactory) -> Outcome {
    let swarm = Swarm::start(factory).await?;
    let key = fresh_key("own_store");
    let exp = dht_now() + 30.0;
    for i in 0..swarm.len() {
        let subkey = format!("node {i}");
        let value = Bytes::from(format!("written through node {i}"));
        ensure!(
            swarm.store(i, &key, subkey.as_bytes(), value.clone(), exp).await?,
            "store through node {i} false"
        );
        for latest in [false, true] {
            let dict = swarm.get_with(i, &key, latest).await?;
            expect_entry(&dict, subkey.as_bytes(), &value, exp, &format!("node {i}, latest = {latest}"))?;
        }
    }
    Ok(())
}
