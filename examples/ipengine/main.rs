//! `ipengine`: the reference Rust engine binary. It registers with a controller (ours or
//! ipyparallel's) and runs registered Rust functions; clients call them by name.
//!
//! ```text
//! cargo run --example ipcontroller &
//! cargo run --example ipengine -- -n 4          # four engines in one process
//! cargo run --example ipengine -- --file=path/to/ipcontroller-engine.json --id=7
//! ```
//!
//! The connection info comes from `--file`, else `$IPP_CONNECTION_INFO` (the file's JSON),
//! else `<profile>/security/ipcontroller[-<cluster-id>]-engine.json`, waiting up to 10 s for
//! that file to appear (as ipyparallel's `ipengine` does).
//!
//! Functions: `square` (i64), `fib` (u64), `sum` (list of f64), `sleep` (seconds, returns
//! them), `fail` (always errors, with an optional message), `panic`, `echo` (any JSON value;
//! json payloads only), `pi_sample` ((samples, seed) → hits inside the quarter circle, for
//! Monte Carlo), `digit_counts` (string → count of each decimal digit). Plus the built-ins
//! `ipp.push`, `ipp.pull` and `ipp.noop`.

#[path = "../ipcontroller/profile.rs"]
#[allow(dead_code)] // the controller's helpers that create profiles are not needed here
mod profile;

/// The allocator: glibc's malloc was ~10% of the controller's CPU per task; mimalloc (built
/// without transparent huge pages) gave +20-25% tasks/s in `bench` (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipp::core::busy_poll::BusyPoll;
use ipp::core::engine::{
    connection_info_from_env, connection_info_from_file, Engine, RunningEngine, RustExecutor,
    TaskContext,
};
use ipp::core::protocol::{ConnectionFiles, EngineConnectionInfo};
use ipp::core::transport::Transport;
use ipp::transport_zmq::ZmqTransport;

/// Starts IPython Parallel engines that run registered Rust functions.
#[derive(Debug, Parser)]
#[command(name = "ipengine", version, about)]
struct Args {
    /// The engine connection file (`ipcontroller-engine.json`).
    #[arg(long, visible_alias = "url-file")]
    file: Option<PathBuf>,
    /// The IPython profile whose `security/` folder holds the connection file.
    #[arg(long, default_value = "default")]
    profile: String,
    /// The profile directory; overrides --profile and $IPP_PROFILE_DIR.
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    /// Cluster id: the connection file is `ipcontroller-<id>-engine.json`.
    #[arg(long, env = "IPP_CLUSTER_ID", default_value = "")]
    cluster_id: String,
    /// Ask the controller for this engine id (with -n, the next engines ask for id+1, …).
    #[arg(long)]
    id: Option<u32>,
    /// Number of engines to run in this process.
    #[arg(short = 'n', long = "engines", default_value_t = 1)]
    engines: u32,
    /// Seconds to wait for the connection file to appear.
    #[arg(long, default_value_t = 10.0)]
    wait_for_url_file: f64,
    /// Log level: DEBUG, INFO, WARN, ERROR, CRITICAL, or 10..50.
    #[arg(long, default_value = "INFO")]
    log_level: String,
    /// Keep polling the sockets this many microseconds after data arrives before sleeping
    /// (see `ipp_core::busy_poll`); 0 sleeps at once.
    #[arg(long, default_value_t = ipp::core::busy_poll::DEFAULT_WINDOW.as_micros() as u64)]
    busy_poll_us: u64,
}

fn log_filter(level: &str) -> Result<&'static str> {
    Ok(match level.to_ascii_uppercase().as_str() {
        "DEBUG" | "10" | "0" => "debug",
        "INFO" | "20" => "info",
        "WARN" | "WARNING" | "30" => "warn",
        "ERROR" | "40" | "CRITICAL" | "50" => "error",
        other => bail!("unknown log level {other:?}; use DEBUG, INFO, WARN, ERROR or CRITICAL"),
    })
}

/// The example functions every engine of this binary registers.
fn example_functions() -> RustExecutor {
    let executor = RustExecutor::new();
    executor
        // Functions that return in microseconds run inline on the engine's task.
        .register_inline_infallible("square", |n: i64| n.wrapping_mul(n))
        .register("fib", fib)
        .register_infallible("sum", |values: Vec<f64>| values.iter().sum::<f64>())
        .register("sleep", |seconds: f64| {
            if !(0.0..=86_400.0).contains(&seconds) {
                return Err(format!("sleep takes 0 to 86400 seconds, not {seconds}"));
            }
            // We run on the blocking pool: sleeping here stalls nothing else.
            std::thread::sleep(Duration::from_secs_f64(seconds));
            Ok(seconds)
        })
        .register("fail", |message: Option<String>| -> Result<(), String> {
            Err(message.unwrap_or_else(|| "fail always fails".to_owned()))
        })
        .register_infallible("panic", |message: Option<String>| -> () {
            panic!(
                "{}",
                message.unwrap_or_else(|| "panic always panics".to_owned())
            )
        })
        .register_inline_infallible("echo", |value: serde_json::Value| value)
        .register_infallible("pi_sample", |(samples, seed): (u64, u64)| {
            pi_sample(samples, seed)
        })
        .register_with_context("digit_counts", |ctx: &TaskContext, text: String| {
            let counts = digit_counts(&text);
            ctx.println(format!("counted {} digits", counts.iter().sum::<u64>()));
            Ok::<_, std::convert::Infallible>(counts)
        });
    executor
}

/// The `n`th Fibonacci number, or an error past what a `u64` holds.
fn fib(n: u64) -> Result<u64, String> {
    // `b` runs one step ahead and may overflow on the last step without it mattering.
    let (mut a, mut b) = (0u64, Some(1u64));
    for _ in 0..n {
        let next = b.ok_or_else(|| format!("fib({n}) does not fit in a u64 (n ≤ 93)"))?;
        b = a.checked_add(next);
        a = next;
    }
    Ok(a)
}

/// How many of `samples` points in the unit square fall inside the quarter circle
/// (SplitMix64 seeded with `seed`, so a seed always gives the same count).
fn pi_sample(samples: u64, seed: u64) -> u64 {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let unit = |bits: u64| (bits >> 11) as f64 / (1u64 << 53) as f64;
    (0..samples)
        .filter(|_| {
            let (x, y) = (unit(next()), unit(next()));
            x * x + y * y <= 1.0
        })
        .count() as u64
}

/// Occurrences of each decimal digit in `text`.
fn digit_counts(text: &str) -> [u64; 10] {
    let mut counts = [0u64; 10];
    for digit in text.chars().filter_map(|c| c.to_digit(10)) {
        counts[digit as usize] += 1;
    }
    counts
}

/// `--file`, else `$IPP_CONNECTION_INFO`, else the profile's engine file (waited for).
async fn connection_info(args: &Args) -> Result<EngineConnectionInfo> {
    let path = match &args.file {
        Some(path) => path.clone(),
        None => {
            if let Some(info) = connection_info_from_env()? {
                tracing::info!("using the connection info in $IPP_CONNECTION_INFO");
                return Ok(info);
            }
            let profile_dir =
                profile::resolve_profile_dir(args.profile_dir.as_deref(), &args.profile)?;
            ConnectionFiles::in_profile(&profile_dir, &args.cluster_id).engine
        }
    };
    wait_for_file(
        &path,
        Duration::from_secs_f64(args.wait_for_url_file.max(0.0)),
    )
    .await?;
    Ok(connection_info_from_file(&path)?)
}

async fn wait_for_file(path: &Path, patience: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut logged = false;
    while !tokio::fs::try_exists(path).await.unwrap_or(false) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "connection file {} not found after {:.1} s; start a controller or pass --file",
                path.display(),
                patience.as_secs_f64()
            );
        }
        if !logged {
            tracing::info!(path = %path.display(), "waiting for the connection file");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn run(args: Args) -> Result<bool> {
    let info = connection_info(&args).await?;
    if args.engines == 0 {
        bail!("-n/--engines must be at least 1");
    }
    let transport: Arc<dyn Transport> = Arc::new(ZmqTransport::new());
    let mut engines: Vec<RunningEngine> = Vec::new();
    for index in 0..args.engines {
        let requested = args.id.map(|id| id.saturating_add(index));
        let started = Engine::builder(info.clone())
            .with_transport(Arc::clone(&transport))
            .with_executor(Arc::new(example_functions()))
            .with_requested_id(requested)
            .start()
            .await;
        match started {
            Ok(engine) => {
                tracing::info!(engine.id = engine.id(), engine.uuid = %engine.uuid(),
                    "engine running");
                engines.push(engine);
            }
            Err(err) => {
                for engine in engines {
                    engine.shutdown().await;
                }
                return Err(err).context("registration failed");
            }
        }
    }

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let all_stopped = futures_all_stopped(&engines);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
        () = all_stopped => tracing::info!("every engine has stopped"),
    }
    let mut clean = true;
    for engine in engines {
        if engine.is_stopped() {
            if let Err(err) = engine.wait().await {
                tracing::error!(error = %err, "engine failed");
                clean = false;
            }
        } else {
            engine.shutdown().await;
        }
    }
    Ok(clean)
}

/// Resolves once every engine has stopped.
async fn futures_all_stopped(engines: &[RunningEngine]) {
    for engine in engines {
        engine.stopped().await;
    }
}

fn main() {
    let args = Args::parse();
    let level = match log_filter(&args.log_level) {
        Ok(level) => level,
        Err(err) => {
            eprintln!("ipengine: error: {err:#}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs usually go to files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // One thread: an engine runs one request at a time, its functions run on the blocking
    // pool (the inline ones return in microseconds), and on a few CPUs a single-threaded
    // runtime halves the context switches per request (see BENCHMARKS.md).
    let runtime = match BusyPoll::new(Duration::from_micros(args.busy_poll_us))
        .build(&mut tokio::runtime::Builder::new_current_thread())
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ipengine: error: cannot start the async runtime: {err}");
            std::process::exit(2);
        }
    };
    let outcome = runtime.block_on(run(args));
    // A function may still be running on the blocking pool (e.g. `sleep`): do not wait.
    runtime.shutdown_background();
    match outcome {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(255),
        Err(err) => {
            eprintln!("ipengine: error: {err:#}");
            // ipyparallel's ipengine exits with 255 when registration fails.
            std::process::exit(255);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_functions_compute_what_they_say() {
        assert_eq!(fib(10).unwrap(), 55);
        assert_eq!(fib(93).unwrap(), 12_200_160_415_121_876_738);
        assert!(fib(94).is_err());
        assert_eq!(digit_counts("3.14159"), [0, 2, 0, 1, 1, 1, 0, 0, 0, 1]);
        let hits = pi_sample(100_000, 7);
        let pi = 4.0 * hits as f64 / 100_000.0;
        assert!((pi - std::f64::consts::PI).abs() < 0.05, "{pi}");
        assert_eq!(pi_sample(1000, 3), pi_sample(1000, 3));
    }
}
