//! `averager`: the command-line tool of the averager project.
//!
//! - `averager demo`: a local Moshpit swarm averaging random tensors until every peer holds the
//!   global mean, one line per round (groups, all-reduce time, algbw, spread across peers).
//! - `averager bench`: all-reduce throughput of one full group of in-process peers.
//! - `averager node`: one long-running networked peer that averages every few seconds.
//! - `averager plan`: who reduces which span of an all-reduce, and the bytes and time it takes.
//! - `averager sim`: many in-process peers (1,024 by default) running Moshpit rounds.
//!
//! Results go to stdout, logs (`RUST_LOG`, default `warn,averager=info`) and progress bars to
//! stderr, so stdout stays parseable.

mod allocator;
mod backends;
mod bench;
mod bench_processes;
mod cli;
mod demo;
mod failure;
mod metrics;
mod node;
mod plan;
mod plot;
mod processes;
mod progress;
mod report;
mod signals;
mod sim;
mod swarm;
mod tensors;
mod worker;

use std::process::ExitCode;

use clap::Parser;

pub(crate) use failure::Result;

/// `println!` for result lines, except that a closed stdout (`averager demo | head -3`) is not a
/// panic: the run goes on (and still writes its plot) with nobody reading.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use out;

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    // clap prints its own message and exits with status 2 on bad flags.
    let cli = cli::Cli::parse();
    init_logs(cli.command.default_log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: cli::Command) -> Result<ExitCode> {
    match command {
        cli::Command::Demo(args) => demo::run(args).await,
        cli::Command::Bench(args) => bench::run(args).await,
        cli::Command::Node(args) => node::run(args).await,
        cli::Command::Plan(args) => plan::run(&args),
        cli::Command::Sim(args) => sim::run(args).await,
        cli::Command::Worker(args) => worker::run(args).await,
    }
}

/// Logs go to stderr through `tracing`; `RUST_LOG` overrides the command's default filter.
fn init_logs(default_filter: &str) {
    use std::io::IsTerminal;

    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A closing span is a line with its fields: `RUST_LOG=averager_core=info` shows every
        // step's `step`, `matchmaking`, `allreduce` and `state_download` spans.
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        // Colour codes only for a person; files and pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
