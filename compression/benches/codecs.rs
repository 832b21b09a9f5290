//! Single-thread throughput of every codec on one 64 MB float32 tensor.
//!
//! Encodes and decodes 16,777,216 seeded standard-normal values with each codec, keeps the best of
//! up to [`MAX_RUNS`] runs (fewer once a codec has used [`BUDGET`]), and prints, per codec, encode
//! and decode throughput (with `compress`/`extract`, which allocate, and with `encode_into`/
//! `decode_into` on reused buffers, as the all-reduce calls them, on the whole tensor and on
//! 512 KiB parts of it in turn) in GB/s of the original tensor (1e9 bytes, so 0.067 GB per pass), the
//! encoded size over the original size and the mean squared error of the round trip. On Linux
//! the times are the thread's CPU time, so the figures say what one core does even while other
//! jobs share the machine (wall time elsewhere).
//!
//! ```text
//! cargo bench -p averager-compression --all-features            # a table
//! cargo bench -p averager-compression --all-features -- --json  # JSON lines
//! cargo bench -p averager-compression -- float16 uniform8         # only these codecs
//! ```
//!
//! Without `--all-features` the `zstd+*` and `lz4+*` rows are skipped.

use std::hint::black_box;
use std::time::{Duration, Instant};

use averager_compression as _;
use averager_conformance::compression::fixtures::{case_rng, standard_normal};
use averager_core::Registry;
use averager_core::compression::{BytesMut, Compression, CompressionInfo, NoCompression, WireTensor};
use averager_core::tensor::{Tensor, TensorSlice, TensorView};

/// Elements of the benchmarked tensor: 64 MiB of float32.
const NUMEL: usize = 1 << 24;

/// The 2-D shape meanstd16 is given (it normalizes each last-axis row).
const MATRIX: [usize; 2] = [4096, 4096];

/// Elements per part in the per-part columns: 512 KiB of f32, the all-reduce's default part
/// size, so the data stays in cache as it does when the engine encodes and decodes parts.
const PART: usize = 1 << 17;

/// Most runs per codec; the best one counts.
const MAX_RUNS: usize = 5;

/// Once a codec's runs (encode and decode together) have taken this long, no more are started.
const BUDGET: Duration = Duration::from_secs(6);

/// Codecs and the shape each is given; `None` is the flat `[NUMEL]`.
const CODECS: &[(&str, Option<[usize; 2]>)] = &[
    ("none", None),
    ("float16", None),
    ("meanstd16", Some(MATRIX)),
    ("uniform8", None),
    ("quantile8", None),
    ("blockwise8", None),
    #[cfg(feature = "zstd")]
    ("zstd+float16", None),
    #[cfg(feature = "zstd")]
    ("zstd+uniform8", None),
    #[cfg(feature = "lz4")]
    ("lz4+float16", None),
    #[cfg(feature = "lz4")]
    ("lz4+uniform8", None),
];

/// A stopwatch of this thread's CPU time where the OS offers one (Linux), else of wall time:
/// on a machine shared with other jobs, CPU time still says what one core achieves.
struct Stopwatch {
    #[cfg(not(target_os = "linux"))]
    wall: Instant,
    #[cfg(target_os = "linux")]
    cpu: Duration,
}

/// Whether [`Stopwatch`] measures CPU time.
const CPU_TIME: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            #[cfg(not(target_os = "linux"))]
            wall: Instant::now(),
            #[cfg(target_os = "linux")]
            cpu: thread_cpu(),
        }
    }

    fn elapsed(&self) -> Duration {
        #[cfg(target_os = "linux")]
        return thread_cpu().saturating_sub(self.cpu);
        #[cfg(not(target_os = "linux"))]
        self.wall.elapsed()
    }
}

/// One codec's measurements.
struct Row {
    codec: String,
    runs: usize,
    encode_gbps: f64,
    decode_gbps: f64,
    /// `encode_into` a reused buffer.
    encode_into_gbps: f64,
    /// `decode_into` a reused f32 buffer.
    decode_into_gbps: f64,
    /// `encode_into` of every [`PART`]-sized part in turn, into one reused buffer.
    encode_part_gbps: f64,
    /// `decode_into` of every part in turn, into its slice of one output.
    decode_part_gbps: f64,
    ratio: f64,
    mse: f64,
}

fn codec(name: &str) -> std::sync::Arc<dyn Compression> {
    if name == "none" {
        return std::sync::Arc::new(NoCompression);
    }
    Registry::global().codec(name).unwrap_or_else(|e| panic!("codec {name} is not available: {e}"))
}

/// Mean squared error of `decoded` against `original`, checking the decoded shape first.
fn check(name: &str, decoded: &Tensor, shape: &[usize], original: &[f32]) -> f64 {
    assert_eq!(
        decoded.shape(),
        shape,
        "{name}: round trip decoded to shape {:?}, expected {shape:?}",
        decoded.shape()
    );
    let values = decoded.as_f32().unwrap_or_else(|e| panic!("{name}: round trip is not float32: {e}"));
    assert_eq!(
        values.len(),
        original.len(),
        "{name}: round trip has {} elements, expected {}",
        values.len(),
        original.len()
    );
    let sum: f64 = values
        .iter()
        .zip(original)
        .map(|(&d, &x)| {
            let e = f64::from(d) - f64::from(x);
            e * e
        })
        .sum();
    sum / original.len() as f64
}

/// Best times of `encode_into` and `decode_into` over all [`PART`]-sized parts of `values` (flat),
/// as the all-reduce calls them: one reused encode buffer, decoding into the parts' slices.
fn bench_parts(name: &str, codec: &dyn Compression, values: &[f32]) -> (Duration, Duration) {
    let whole = TensorView::new(vec![values.len()], TensorSlice::F32(values))
        .unwrap_or_else(|e| panic!("{name}: cannot view the tensor: {e}"));
    let parts: Vec<(TensorView<'_>, CompressionInfo)> = values
        .chunks(PART)
        .enumerate()
        .map(|(k, part)| {
            let view = TensorView::new(vec![part.len()], TensorSlice::F32(part))
                .unwrap_or_else(|e| panic!("{name}: cannot view part {k}: {e}"));
            (view, CompressionInfo::for_tensor(0, &whole).for_part(k, PART))
        })
        .collect();
    let mut buffer = BytesMut::new();
    let mut messages: Vec<WireTensor> = Vec::with_capacity(parts.len());
    let mut decoded = vec![0f32; values.len()];
    let (mut best_encode, mut best_decode) = (Duration::MAX, Duration::MAX);
    let started = Instant::now();
    let mut runs = 0;
    while runs < MAX_RUNS && (runs == 0 || started.elapsed() < BUDGET) {
        messages.clear();
        let mut encode = Duration::ZERO;
        for (view, info) in &parts {
            buffer.clear();
            let t = Stopwatch::start();
            let header = codec
                .encode_into(black_box(view), info, &mut buffer)
                .unwrap_or_else(|e| panic!("{name}: encode_into of a part: {e}"));
            encode += t.elapsed();
            // Kept outside the timed section: the engine sends each part's bytes on.
            messages.push(WireTensor { buffer: BytesMut::from(&buffer[..]).freeze(), ..header });
        }
        let t = Stopwatch::start();
        for (message, out) in messages.iter().zip(decoded.chunks_mut(PART)) {
            codec
                .decode_into(black_box(message), out)
                .unwrap_or_else(|e| panic!("{name}: decode_into of a part: {e}"));
        }
        best_encode = best_encode.min(encode);
        best_decode = best_decode.min(t.elapsed());
        runs += 1;
    }
    (best_encode, best_decode)
}

fn bench(name: &str, shape: &[usize], values: &[f32]) -> Row {
    let codec = codec(name);
    let view = TensorView::new(shape.to_vec(), TensorSlice::F32(values))
        .unwrap_or_else(|e| panic!("{name}: cannot view the tensor as {shape:?}: {e}"));
    let info = CompressionInfo::for_tensor(0, &view);
    let bytes = std::mem::size_of_val(values) as f64;

    let (mut best_encode, mut best_decode) = (Duration::MAX, Duration::MAX);
    let (mut best_encode_into, mut best_decode_into) = (Duration::MAX, Duration::MAX);
    // Reused across runs, as a sender reuses its part buffer: the first run pays the page faults.
    let mut buffer = BytesMut::new();
    let mut decoded_into = vec![0f32; values.len()];
    let mut encoded_len = 0;
    let mut mse = f64::NAN;
    let mut runs = 0;
    let started = Instant::now();
    while runs < MAX_RUNS && (runs == 0 || started.elapsed() < BUDGET) {
        let t = Stopwatch::start();
        let wire: WireTensor =
            codec.compress(black_box(&view), &info).unwrap_or_else(|e| panic!("{name}: encode: {e}"));
        best_encode = best_encode.min(t.elapsed());

        let t = Stopwatch::start();
        let decoded = codec.extract(black_box(&wire)).unwrap_or_else(|e| panic!("{name}: decode: {e}"));
        best_decode = best_decode.min(t.elapsed());

        buffer.clear();
        let t = Stopwatch::start();
        let header = codec
            .encode_into(black_box(&view), &info, &mut buffer)
            .unwrap_or_else(|e| panic!("{name}: encode_into: {e}"));
        best_encode_into = best_encode_into.min(t.elapsed());
        assert_eq!(buffer[..], wire.buffer[..], "{name}: encode_into differs from compress");

        let into_wire = WireTensor { buffer: buffer.split().freeze(), ..header };
        let t = Stopwatch::start();
        codec
            .decode_into(black_box(&into_wire), &mut decoded_into)
            .unwrap_or_else(|e| panic!("{name}: decode_into: {e}"));
        best_decode_into = best_decode_into.min(t.elapsed());
        // Give the buffer back so the next run reuses its allocation.
        drop(into_wire);
        buffer.reserve(wire.buffer.len());

        encoded_len = wire.buffer.len();
        if runs == 0 {
            mse = check(name, &decoded, shape, values);
        } else {
            assert_eq!(decoded.shape(), shape, "{name}: round trip decoded to the wrong shape");
        }
        runs += 1;
        // Both are dropped here, outside the timed sections.
        drop((wire, decoded));
    }
    let (encode_part, decode_part) = bench_parts(name, &*codec, values);
    Row {
        codec: name.to_string(),
        runs,
        encode_part_gbps: bytes / encode_part.as_secs_f64() / 1e9,
        decode_part_gbps: bytes / decode_part.as_secs_f64() / 1e9,
        encode_gbps: bytes / best_encode.as_secs_f64() / 1e9,
        decode_gbps: bytes / best_decode.as_secs_f64() / 1e9,
        encode_into_gbps: bytes / best_encode_into.as_secs_f64() / 1e9,
        decode_into_gbps: bytes / best_decode_into.as_secs_f64() / 1e9,
        ratio: encoded_len as f64 / bytes,
        mse,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other words that do not start with `-` pick codecs by name.
    let json = std::env::args().skip(1).any(|a| a == "--json");
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();

    let values: Vec<f32> =
        standard_normal(&mut case_rng("bench codecs"), NUMEL).into_iter().map(|x| x as f32).collect();
    let flat = [NUMEL];

    if !json {
        println!(
            "{NUMEL} standard-normal f32 values ({:.1} MB), one thread, best of up to {MAX_RUNS} runs of {}; GB = 1e9 bytes of the f32 input",
            (NUMEL * 4) as f64 / 1e6,
            if CPU_TIME { "the thread's CPU time" } else { "wall time" }
        );
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11} {:>5}",
            "codec",
            "enc GB/s",
            "dec GB/s",
            "enc_into",
            "dec_into",
            "into e+d",
            "enc_part",
            "dec_part",
            "part e+d",
            "ratio",
            "mse",
            "runs"
        );
    }
    for &(name, shape) in CODECS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let shape: &[usize] = match &shape {
            Some(s) => s,
            None => &flat,
        };
        let r = bench(name, shape, &values);
        if json {
            let line = serde_json::json!({
                "codec": r.codec,
                "shape": shape,
                "runs": r.runs,
                "encode_gbps": r.encode_gbps,
                "decode_gbps": r.decode_gbps,
                "encode_into_gbps": r.encode_into_gbps,
                "decode_into_gbps": r.decode_into_gbps,
                "part": PART,
                "encode_part_gbps": r.encode_part_gbps,
                "decode_part_gbps": r.decode_part_gbps,
                "ratio": r.ratio,
                "mse": r.mse,
                "clock": if CPU_TIME { "thread-cpu" } else { "wall" },
            });
            println!("{line}");
        } else {
            // The rate of one encode followed by one decode (times add, so rates combine harmonically).
            let round_trip = 1.0 / (1.0 / r.encode_into_gbps + 1.0 / r.decode_into_gbps);
            let part_round_trip = 1.0 / (1.0 / r.encode_part_gbps + 1.0 / r.decode_part_gbps);
            println!(
                "{:<14} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>8.4} {:>11.3e} {:>5}",
                r.codec,
                r.encode_gbps,
                r.decode_gbps,
                r.encode_into_gbps,
                r.decode_into_gbps,
                round_trip,
                r.encode_part_gbps,
                r.decode_part_gbps,
                part_round_trip,
                r.ratio,
                r.mse,
                r.runs
            );
        }
    }
}
