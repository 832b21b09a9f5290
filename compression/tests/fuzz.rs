//! Hostile-input fuzzing of every codec's `extract`, one `#[test]` per codec.
//!
//! The promise under test (`Compression::extract`): untrusted input never panics and never
//! allocates more than the buffer justifies; what decodes has exactly the declared shape and
//! dtype. Each codec decodes [`CASES`] seeded hostile messages, a mix of
//!
//! - random buffers under a random but plausible header (a dtype the codec accepts or any other
//!   or an invalid name; 0 to 4 dims, small, large, `u32::MAX`; random `requires_grad`), with
//!   lengths both arbitrary and close to what the shape needs;
//! - valid encodings of small random tensors after 1 to 8 byte mutations, truncations,
//!   extensions and overwrites with boundary integers;
//! - valid encodings under a forged shape (reshaped, grown, huge, random) or dtype;
//! - for the lossless wrappers, valid zstd/lz4 frames around a mutated inner encoding, so the
//!   inner decoder sees hostile bytes rather than the framing refusing them.
//!
//! A counting global allocator records the largest single allocation on the decoding thread
//! during each `extract`, which is checked against [`allocation_bound`].
//!
//! Each case has its own seed, printed with any failure; `FUZZ_SEED=0x... cargo test -p
//! averager-compression --all-features --test fuzz <codec>` replays that one case, and
//! `FUZZ_CASES=n` changes the number of cases.

// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use averager_compression as _;
use averager_conformance::compression::fixtures::random_tensor;
use averager_core::Registry;
use averager_core::compression::{Compression, CompressionInfo, WireTensor};
use averager_core::tensor::{DType, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Hostile messages per codec.
const CASES: u64 = 100_000;

/// Valid encodings per codec that the mutating cases start from; the last [`LARGE_POOL`] of them
/// are of larger tensors (up to 20000 elements, used by 2% of the cases), the rest of at most a few
/// hundred elements.
const POOL: usize = 64;

/// Valid encodings of larger tensors in the pool.
const LARGE_POOL: usize = 4;

/// `1 MiB`.
const MIB: usize = 1 << 20;

/// Dtype names no dtype has.
const INVALID_DTYPES: [&str; 6] =
    ["", "float8_e4m3fn", "Float32", "torch.float32", "float32\0", "complex128"];

/// Dims that no small buffer justifies.
const HUGE_DIMS: [u32; 6] = [u32::MAX, u32::MAX - 1, 1 << 31, 1 << 24, 65_537, 1 << 20];

/// Boundary values written over 4 bytes: counts, lengths, NaN, infinities, denormals.
const INTERESTING_U32: [u32; 14] = [
    0,
    1,
    2,
    255,
    256,
    1024,
    4096,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
    0x7fc0_0000,
    0x7f80_0000,
    0xff80_0000,
    0x0000_0001,
];

/// Boundary values written over 8 bytes: the codebook and block counts are `i64`.
const INTERESTING_U64: [u64; 12] =
    [0, 1, 255, 256, 257, 1024, 4096, 1 << 32, i64::MAX as u64, 1 << 63, u64::MAX, u32::MAX as u64];

// ---------------------------------------------------------------------------------------------
// The counting allocator.

/// Forwards every call to [`System`], recording on the calling thread the largest size asked for
/// since the last [`reset_largest`].
struct CountingAlloc;

thread_local! {
    /// The largest allocation (or reallocation target) on this thread since the last reset. A
    /// `const` `Cell<usize>` needs no lazy initialisation or destructor, so reading it from inside
    /// the allocator neither allocates nor recurses.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator, even while the thread is torn down.
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

fn reset_largest() {
    LARGEST.with(|largest| largest.set(0));
}

fn largest() -> usize {
    LARGEST.with(Cell::get)
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is a write to a thread-local `Cell`, which neither
// allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: only forwards to `System.alloc` with the caller's layout, under the caller's
        // guarantees (non-zero size).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: only forwards to `System.alloc_zeroed` with the caller's layout, under the
        // caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: only forwards to `System.dealloc`; `ptr` came from this allocator, which got it
        // from `System` with the same layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: only forwards to `System.realloc`; `ptr` came from `System` with `layout`, and
        // the caller guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// The bound.

/// The most one `extract` of `message` by `codec` may allocate at once.
///
/// Direct codecs: `max(16 MiB, 64 * len + 1 MiB)` for a `len`-byte buffer. Every protocol 7.2 format
/// spends at least one byte per element (uint8/bool under NONE, the 8-bit codes) and a decoded
/// tensor holds at most 8 bytes per element (float64, int64, complex64), so a decoder that checks
/// the buffer against the shape before allocating needs at most about `8 * len` bytes for the
/// tensor and as much again for an intermediate (MEANSTD_16BIT decodes rows into f32 before
/// widening). 64x leaves an 8x margin; the megabyte floors cover fixed costs (messages, shape
/// vectors, the test harness) without letting through the gigabytes a forged shape would ask.
///
/// Lossless wrappers: additionally their documented cap,
/// [`decoded_cap`](averager_compression::decoded_cap) of the message (16 bytes per declared
/// element plus 64 KiB, at most `MAX_DECODED_BYTES` = 1 GiB), which bounds the decompressed
/// buffer; the decoded tensor (at most 8 bytes per element) stays below it. zstd's own contexts
/// are allocated by C's `malloc` and are not seen here; decoding goes straight into the output
/// buffer, so zstd allocates no window for the frame.
fn allocation_bound(codec: &str, message: &WireTensor) -> usize {
    let direct = direct_bound(message);
    wrapper_cap(codec, message).map_or(direct, |cap| cap.max(direct))
}

/// The bound of a direct codec: `max(16 MiB, 64 * len + 1 MiB)`.
fn direct_bound(message: &WireTensor) -> usize {
    (64 * message.buffer.len() + MIB).max(16 * MIB)
}

/// Allocations below this are fixed costs (error messages, shape vectors) and are left out of
/// the per-byte summary.
const NOTABLE_ALLOCATION: usize = 64 * 1024;

#[cfg(any(feature = "zstd", feature = "lz4"))]
fn wrapper_cap(codec: &str, message: &WireTensor) -> Option<usize> {
    // A shape whose element count overflows has no cap: the wrapper must refuse it outright.
    codec.contains('+').then(|| averager_compression::decoded_cap(codec, message).ok()).flatten()
}

#[cfg(not(any(feature = "zstd", feature = "lz4")))]
fn wrapper_cap(_codec: &str, _message: &WireTensor) -> Option<usize> {
    None
}

// ---------------------------------------------------------------------------------------------
// The fuzzer.

/// One codec under test, with the valid encodings its cases damage.
struct Fuzzer {
    name: &'static str,
    codec: Arc<dyn Compression>,
    /// The dtypes the codec accepts for some rank from 0 to 4.
    accepted: Vec<DType>,
    /// Valid encodings of random tensors.
    pool: Vec<WireTensor>,
    /// For a wrapper `<prefix>+<inner>`: the inner codec's encodings of the same tensors (index
    /// for index with `pool`) and the `<prefix>+none` codec that frames arbitrary bytes.
    framing: Option<Framing>,
}

struct Framing {
    prefix: &'static str,
    inner_pool: Vec<WireTensor>,
    framer: Arc<dyn Compression>,
}

/// What one case produced, for the summary.
#[derive(Default)]
struct Stats {
    cases: u64,
    decoded: u64,
    largest: usize,
    largest_len: usize,
    /// The largest allocation per buffer byte over the cases that allocated at least
    /// [`NOTABLE_ALLOCATION`] at once, with its case.
    worst_ratio: f64,
    worst_ratio_alloc: usize,
    worst_ratio_len: usize,
    worst_ratio_seed: u64,
    /// Cases (of a lossless wrapper) whose allocation exceeded the direct codecs' bound, allowed
    /// only by the wrapper's cap.
    above_direct_bound: u64,
    failures: Vec<String>,
    failure_count: u64,
}

/// SplitMix64: a case's seed from the codec's base seed and the case index.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of the codec name: a base seed that does not change when codecs are added.
fn base_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// `len` random bytes. They come from SplitMix64 seeded by `rng` rather than from `rng` itself:
/// ChaCha is slow in a debug build, and these bytes need no quality.
fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut state: u64 = rng.random();
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        bytes.extend_from_slice(&mix(state).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

impl Fuzzer {
    fn new(name: &'static str) -> Self {
        let codec = Registry::global().codec(name).unwrap_or_else(|e| panic!("codec {name:?}: {e}"));
        let accepted: Vec<DType> =
            DType::ALL.into_iter().filter(|&d| (0..=4).any(|ndim| codec.accepts(d, ndim))).collect();
        assert!(!accepted.is_empty(), "codec {name:?} accepts no dtype");
        let framing = name.split_once('+').map(|(prefix, inner)| {
            let prefix: &'static str = if prefix == "zstd" { "zstd" } else { "lz4" };
            let framer = Registry::global().codec(&format!("{prefix}+none")).expect("the framing codec");
            let inner = Registry::global().codec(inner).expect("the inner codec");
            (prefix, framer, inner)
        });

        let mut rng = StdRng::seed_from_u64(base_seed(name));
        let (mut pool, mut inner_pool) = (Vec::new(), Vec::new());
        let mut attempts = 0;
        while pool.len() < POOL {
            attempts += 1;
            assert!(attempts < 100 * POOL, "codec {name:?} compresses too few random tensors");
            let large = pool.len() >= POOL - LARGE_POOL;
            let shape = valid_shape(&mut rng, large);
            let candidates: Vec<DType> =
                accepted.iter().copied().filter(|&d| codec.accepts(d, shape.len())).collect();
            if candidates.is_empty() {
                continue;
            }
            let dtype = *pick(&mut rng, &candidates);
            let tensor = random_tensor(&mut rng, dtype, &shape).with_requires_grad(rng.random_bool(0.5));
            let info = CompressionInfo::for_tensor(0, &tensor.view());
            let Ok(wire) = codec.compress(&tensor.view(), &info) else { continue };
            if let Some((_, _, inner)) = &framing {
                let Ok(inner_wire) = inner.compress(&tensor.view(), &info) else { continue };
                inner_pool.push(inner_wire);
            }
            pool.push(wire);
        }
        let framing = framing.map(|(prefix, framer, _)| Framing {
            prefix,
            inner_pool: std::mem::take(&mut inner_pool),
            framer,
        });
        Fuzzer { name, codec, accepted, pool, framing }
    }

    /// Decodes one hostile message per case, collecting panics, wrong layouts and allocations
    /// above the bound.
    fn run(&self) -> Stats {
        let base = base_seed(self.name);
        let replay = std::env::var("FUZZ_SEED").ok().map(|s| {
            let s = s.trim();
            let hex = s.strip_prefix("0x").unwrap_or(s);
            u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("FUZZ_SEED {s:?} is not hex: {e}"))
        });
        let cases =
            std::env::var("FUZZ_CASES").ok().map_or(CASES, |n| n.parse().expect("FUZZ_CASES is a count"));
        let seeds: Box<dyn Iterator<Item = u64>> = match replay {
            Some(seed) => Box::new(std::iter::once(seed)),
            None => Box::new((0..cases).map(|i| mix(base ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))),
        };
        let mut stats = Stats::default();
        for seed in seeds {
            self.case(seed, &mut stats);
        }
        stats
    }

    fn case(&self, seed: u64, stats: &mut Stats) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (message, kind) = self.hostile_message(&mut rng);
        let bound = allocation_bound(self.name, &message);
        let len = message.buffer.len();

        reset_largest();
        let result = catch_unwind(AssertUnwindSafe(|| self.codec.extract(&message)));
        let allocated = largest();

        stats.cases += 1;
        if allocated > stats.largest {
            (stats.largest, stats.largest_len) = (allocated, len);
        }
        let ratio = allocated as f64 / len.max(1) as f64;
        if allocated >= NOTABLE_ALLOCATION && ratio > stats.worst_ratio {
            stats.worst_ratio = ratio;
            (stats.worst_ratio_alloc, stats.worst_ratio_len, stats.worst_ratio_seed) = (allocated, len, seed);
        }

        let describe = || {
            format!(
                "codec {:?}, case seed {seed:#018x} ({kind}: {len}-byte buffer, dtype {:?}, shape {:?}, codec field {:?})",
                self.name, message.dtype, message.size, message.codec
            )
        };
        let mut fail = |what: String| {
            stats.failure_count += 1;
            if stats.failures.len() < 10 {
                stats.failures.push(format!("{}: {what}", describe()));
            }
        };
        if allocated > direct_bound(&message) {
            stats.above_direct_bound += 1;
        }
        if allocated > bound {
            fail(format!("allocated {allocated} bytes at once, above the bound of {bound}"));
        }
        match result {
            Err(payload) => {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string payload)".into());
                fail(format!("extract panicked: {text}"));
            }
            Ok(Err(_)) => {}
            Ok(Ok(tensor)) => {
                stats.decoded += 1;
                let declared: Vec<u64> = message.size.iter().map(|&d| u64::from(d)).collect();
                let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
                if shape != declared || tensor.dtype().name() != message.dtype {
                    fail(format!("decoded to {} {shape:?}", tensor.dtype()));
                }
            }
        }
    }

    /// A hostile message and what kind of case made it.
    fn hostile_message(&self, rng: &mut StdRng) -> (WireTensor, &'static str) {
        let valid = &self.pool[pool_index(rng)];
        let roll = rng.random_range(0..100);
        let (mut message, kind) = match roll {
            0..30 => (self.random_message(rng, valid), "random buffer"),
            30..60 => {
                let buffer = mutate(rng, valid.buffer.to_vec());
                (WireTensor { buffer: buffer.into(), ..valid.clone() }, "mutated encoding")
            }
            60..80 => {
                let size = forge_shape(rng, &valid.size);
                (WireTensor { size, ..valid.clone() }, "forged shape")
            }
            80..88 => {
                let buffer = if rng.random_bool(0.5) {
                    mutate(rng, valid.buffer.to_vec())
                } else {
                    valid.buffer.to_vec()
                };
                let dtype = self.random_dtype_name(rng);
                let size =
                    if rng.random_bool(0.5) { forge_shape(rng, &valid.size) } else { valid.size.clone() };
                (WireTensor { buffer: buffer.into(), dtype, size, ..valid.clone() }, "forged dtype")
            }
            _ => match &self.framing {
                Some(framing) => (self.framed_message(rng, framing), "framed mutated inner encoding"),
                None => {
                    let buffer = mutate(rng, valid.buffer.to_vec());
                    let size = forge_shape(rng, &valid.size);
                    (
                        WireTensor { buffer: buffer.into(), size, ..valid.clone() },
                        "mutated encoding, forged shape",
                    )
                }
            },
        };
        if rng.random_bool(0.1) {
            message.requires_grad = !message.requires_grad;
        }
        if rng.random_bool(0.02) {
            message.compression = rng.random_range(-1..8);
        }
        if self.framing.is_some() && rng.random_bool(0.05) {
            message.codec = self.random_codec_field(rng);
        }
        (message, kind)
    }

    /// Random bytes under a random header: a length either arbitrary or close to one a format
    /// would need for the shape, so that some reach past the length checks.
    fn random_message(&self, rng: &mut StdRng, valid: &WireTensor) -> WireTensor {
        let dtype = self.random_dtype_name(rng);
        let plausible = rng.random_bool(0.5);
        let size = if plausible { small_shape(rng) } else { random_shape(rng) };
        let len = if plausible { plausible_len(rng, &size) } else { random_len(rng) };
        let mut buffer = random_bytes(rng, len);
        if let Some(framing) = &self.framing
            && rng.random_bool(0.5)
        {
            buffer = frame(framing, buffer);
        }
        WireTensor {
            buffer: buffer.into(),
            dtype,
            size,
            requires_grad: rng.random_bool(0.5),
            ..valid.clone()
        }
    }

    /// A valid frame around a damaged inner encoding, under its own header or a forged one.
    fn framed_message(&self, rng: &mut StdRng, framing: &Framing) -> WireTensor {
        let index = pool_index(rng);
        let (valid, inner) = (&self.pool[index], &framing.inner_pool[index]);
        let bytes = mutate(rng, inner.buffer.to_vec());
        let size = if rng.random_bool(0.3) { forge_shape(rng, &valid.size) } else { valid.size.clone() };
        WireTensor { buffer: frame(framing, bytes).into(), size, ..valid.clone() }
    }

    fn random_dtype_name(&self, rng: &mut StdRng) -> String {
        match rng.random_range(0..10) {
            0..6 => pick(rng, &self.accepted).name().to_string(),
            6..8 => pick(rng, &DType::ALL).name().to_string(),
            _ => pick(rng, &INVALID_DTYPES).to_string(),
        }
    }

    /// What a wrapper's message might name instead of the wrapper itself.
    fn random_codec_field(&self, rng: &mut StdRng) -> String {
        let prefix = self.framing.as_ref().map_or("zstd", |f| f.prefix);
        let inner = *pick(rng, &["none", "float16", "meanstd16", "uniform8", "quantile8", "blockwise8"]);
        match rng.random_range(0..8) {
            0..3 => format!("{prefix}+{inner}"),
            3 => format!("{prefix}+"),
            4 => prefix.to_string(),
            5 => format!("{prefix}+{prefix}+{inner}"),
            6 => format!("{prefix}+nonexistent"),
            _ => String::new(),
        }
    }
}

/// `bytes` as the payload of a valid frame of the wrapper's format (by `<prefix>+none` on a
/// uint8 tensor, whose inner buffer is the bytes themselves).
fn frame(framing: &Framing, bytes: Vec<u8>) -> Vec<u8> {
    let tensor = Tensor::new(vec![bytes.len()], TensorData::U8(bytes)).expect("a 1-d uint8 tensor");
    let info = CompressionInfo::for_tensor(0, &tensor.view());
    framing.framer.compress(&tensor.view(), &info).expect("framing arbitrary bytes").buffer.to_vec()
}

/// A pool entry: one of the large ones for 2% of the cases, to keep the run fast.
fn pool_index(rng: &mut StdRng) -> usize {
    if rng.random_bool(0.02) {
        rng.random_range(POOL - LARGE_POOL..POOL)
    } else {
        rng.random_range(0..POOL - LARGE_POOL)
    }
}

/// A shape for a valid tensor: 0 to 4 dims of at most a few hundred elements, or one of up to
/// 20000 elements when `large`.
fn valid_shape(rng: &mut StdRng, large: bool) -> Vec<usize> {
    if large {
        let n = rng.random_range(2000..=20_000);
        return match rng.random_range(0..3) {
            0 => vec![n],
            1 => vec![n / 16, 16],
            _ => vec![4, n / 64, 16],
        };
    }
    let ndim = rng.random_range(0..=4);
    let max_dim = [0, 300, 24, 8, 5][ndim];
    (0..ndim).map(|_| if rng.random_bool(0.05) { 0 } else { rng.random_range(1..=max_dim) }).collect()
}

fn random_dim(rng: &mut StdRng) -> u32 {
    match rng.random_range(0..20) {
        0..12 => rng.random_range(0..=16),
        12..15 => rng.random_range(0..=4096),
        15 => 0,
        16 => u32::MAX,
        17 | 18 => *pick(rng, &HUGE_DIMS),
        _ => rng.random(),
    }
}

/// 0 to 4 dims, small, large or huge.
fn random_shape(rng: &mut StdRng) -> Vec<u32> {
    let ndim = rng.random_range(0..=4);
    (0..ndim).map(|_| random_dim(rng)).collect()
}

/// 0 to 4 dims of at most 512 elements in all (4096 for one in ten).
fn small_shape(rng: &mut StdRng) -> Vec<u32> {
    let ndim = rng.random_range(0..=4);
    let most = if rng.random_bool(0.1) { 4096 } else { 512 };
    let mut shape = Vec::with_capacity(ndim);
    let mut numel = 1u32;
    for _ in 0..ndim {
        let dim = rng.random_range(0..=(most / numel.max(1)).min(64));
        numel = numel.saturating_mul(dim.max(1));
        shape.push(dim);
    }
    shape
}

/// Mostly short, sometimes up to 64 KiB.
fn random_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..40 => rng.random_range(0..=64),
        40..80 => rng.random_range(0..=1100),
        80..98 => rng.random_range(0..=4096),
        _ => rng.random_range(0..=65_536),
    }
}

/// A length some format might need for `shape`: 1, 2, 4 or 8 bytes per element plus no header,
/// the 8-bit codebook's 1032 bytes, the blockwise header or MEANSTD_16BIT's per-row stats, give or
/// take a few bytes.
fn plausible_len(rng: &mut StdRng, shape: &[u32]) -> usize {
    let numel: usize = shape.iter().map(|&d| d as usize).product();
    let rows = shape.last().map_or(1, |&d| numel / (d as usize).max(1));
    let len = match rng.random_range(0..5) {
        0 => numel * *pick(rng, &[1, 2, 4, 8]),
        1 => numel + 1032,
        2 => numel + 16 + 4 * numel.div_ceil(4096) + 1024,
        3 => 2 * numel + 8 * rows,
        _ => numel * 4,
    };
    match rng.random_range(0..4) {
        0 => len.saturating_sub(rng.random_range(1..=8)),
        1 => len + rng.random_range(1..=8),
        _ => len,
    }
}

/// 1 to 8 damaging edits of `bytes`.
fn mutate(rng: &mut StdRng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=8) {
        let len = bytes.len();
        match rng.random_range(0..11) {
            0 | 1 if len > 0 => {
                let at = rng.random_range(0..len);
                bytes[at] ^= rng.random_range(1..=u8::MAX);
            }
            2 if len > 0 => {
                let at = rng.random_range(0..len);
                bytes[at] = rng.random();
            }
            3 => bytes.truncate(rng.random_range(0..=len)),
            4 => bytes.truncate(len.saturating_sub(rng.random_range(1..=8))),
            5 => {
                let extra = rng.random_range(1..=64);
                if rng.random_bool(0.5) {
                    bytes.extend(random_bytes(rng, extra));
                } else {
                    bytes.resize(len + extra, 0);
                }
            }
            6 => {
                let at = rng.random_range(0..=len);
                bytes.insert(at, rng.random());
            }
            7 if len > 0 => {
                bytes.remove(rng.random_range(0..len));
            }
            8 if len >= 4 => {
                let at = rng.random_range(0..=len - 4);
                bytes[at..at + 4].copy_from_slice(&pick(rng, &INTERESTING_U32).to_le_bytes());
            }
            9 if len >= 8 => {
                let at = rng.random_range(0..=len - 8);
                bytes[at..at + 8].copy_from_slice(&pick(rng, &INTERESTING_U64).to_le_bytes());
            }
            // Headers sit at the start: counts at 0 and 8, the lz4 size prefix, zstd's frame header.
            _ if len >= 8 => {
                let at = 4 * rng.random_range(0..=(len - 8).min(16) / 4);
                if rng.random_bool(0.5) {
                    bytes[at..at + 8].copy_from_slice(&pick(rng, &INTERESTING_U64).to_le_bytes());
                } else {
                    bytes[at..at + 4].copy_from_slice(&pick(rng, &INTERESTING_U32).to_le_bytes());
                }
            }
            _ => bytes.push(rng.random()),
        }
    }
    bytes
}

/// A shape other than `size` for the same buffer: reshaped to the same element count, one dim
/// changed, a dim added or dropped, huge, or random.
fn forge_shape(rng: &mut StdRng, size: &[u32]) -> Vec<u32> {
    let numel: u64 = size.iter().map(|&d| u64::from(d)).product();
    let mut shape = size.to_vec();
    match rng.random_range(0..8) {
        0 => {
            // Same element count, other rows: flattened, transposed or split with ones.
            match rng.random_range(0..3) {
                0 => shape = vec![u32::try_from(numel).unwrap_or(u32::MAX)],
                1 => shape.reverse(),
                _ => shape.insert(rng.random_range(0..=shape.len()), 1),
            }
        }
        1 if !shape.is_empty() => {
            let at = rng.random_range(0..shape.len());
            shape[at] = match rng.random_range(0..5) {
                0 => shape[at].wrapping_add(1),
                1 => shape[at].wrapping_sub(1),
                2 => shape[at].saturating_mul(2),
                3 => 0,
                _ => *pick(rng, &HUGE_DIMS),
            };
        }
        2 if shape.len() < 4 => shape.push(random_dim(rng)),
        3 if !shape.is_empty() => {
            shape.remove(rng.random_range(0..shape.len()));
        }
        4 => shape = vec![*pick(rng, &HUGE_DIMS); rng.random_range(1..=4)],
        5 => shape.clear(),
        _ => shape = random_shape(rng),
    }
    shape
}

/// Runs `name`'s cases and fails on any panic, wrong layout or over-allocation.
fn fuzz(name: &'static str) {
    let started = Instant::now();
    let fuzzer = Fuzzer::new(name);
    let stats = fuzzer.run();
    let took = started.elapsed();
    let mut report = format!(
        "codec {name:?}: {} cases in {took:.2?}, {} decoded; largest allocation {} bytes (for a {}-byte buffer); \
         largest allocation (of at least 64 KiB) per buffer byte {:.1} ({} bytes for {} bytes, seed {:#018x}); \
         {} cases above max(16 MiB, 64 * len + 1 MiB)",
        stats.cases,
        stats.decoded,
        stats.largest,
        stats.largest_len,
        stats.worst_ratio,
        stats.worst_ratio_alloc,
        stats.worst_ratio_len,
        stats.worst_ratio_seed,
        stats.above_direct_bound,
    );
    println!("{report}");
    if stats.failure_count > 0 {
        let _ =
            write!(report, "\n{} failing cases, the first {}:", stats.failure_count, stats.failures.len());
        for failure in &stats.failures {
            let _ = write!(report, "\n  {failure}");
        }
        panic!("{report}");
    }
}

macro_rules! fuzz_codecs {
    ($($(#[$attr:meta])* $test:ident => $name:literal;)*) => {
        $(
            $(#[$attr])*
            #[test]
            fn $test() {
                fuzz($name);
            }
        )*
    };
}

fuzz_codecs! {
    none => "none";
    float16 => "float16";
    meanstd16 => "meanstd16";
    uniform8 => "uniform8";
    quantile8 => "quantile8";
    blockwise8 => "blockwise8";
    #[cfg(feature = "zstd")]
    zstd_uniform8 => "zstd+uniform8";
    #[cfg(feature = "zstd")]
    zstd_none => "zstd+none";
    #[cfg(feature = "lz4")]
    lz4_float16 => "lz4+float16";
    #[cfg(feature = "lz4")]
    lz4_none => "lz4+none";
}
