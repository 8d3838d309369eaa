//! The quickstart: a controller, N Rust engines and a Rust client in one process, talking
//! over real ZeroMQ on 127.0.0.1, doing real work and timing it.
//!
//! ```text
//! cargo run --release --example quickstart            # 2 engines
//! cargo run --release --example quickstart -- -n 4    # 4 engines
//! ```
//!
//! It computes digits of pi on one engine, counts digit frequencies in parallel (the
//! seeds' "parallel pi digits" statistics), estimates pi by Monte Carlo with load
//! balancing, and prints a timing table: round-trip latency, throughput and bandwidth.

// An example's job is to print what it did.
#![allow(clippy::print_stdout)]

mod work;

/// The allocator: glibc's malloc was ~10% of the controller's CPU per task; mimalloc (built
/// without transparent huge pages) gave +20-25% tasks/s in `bench` (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use ipp::core::client::{Client, MapOptions};
use ipp::core::controller::{Controller, ControllerConfig};
use ipp::core::engine::{Engine, RunningEngine, RustExecutor};
use ipp::core::serialize::Payload;
use ipp::core::store::NoDb;
use ipp::transport_zmq::ZmqTransport;

/// Runs a local cluster of Rust engines and some parallel work on it.
#[derive(Debug, Parser)]
struct Args {
    /// How many engines to start.
    #[arg(short = 'n', long, default_value_t = 2)]
    engines: usize,
    /// How many digits of pi to compute.
    #[arg(long, default_value_t = 5_000)]
    digits: usize,
    /// How many no-op tasks the throughput runs send.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
}

const WAIT: Duration = Duration::from_secs(120);

fn executor() -> Arc<RustExecutor> {
    let executor = RustExecutor::new();
    executor
        .register_infallible("pi_digits", work::pi_digits)
        .register_infallible("digit_counts", work::digit_counts)
        .register_infallible("pi_hits", work::pi_hits)
        // Returns in nanoseconds: run on the engine's task, not the blocking pool.
        .register_inline_infallible("noop", |(): ()| ());
    Arc::new(executor)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let transport = Arc::new(ZmqTransport::new());
    let controller = Controller::builder(ControllerConfig::default())
        .with_transport(transport.clone())
        .with_store(Arc::new(NoDb))
        .start()
        .await
        .context("starting the controller")?;
    let executor = executor();
    let mut engines: Vec<RunningEngine> = Vec::new();
    for _ in 0..args.engines.max(1) {
        let engine = Engine::builder(controller.engine_info().clone())
            .with_transport(transport.clone())
            .with_executor(executor.clone())
            .start()
            .await
            .context("starting an engine")?;
        engines.push(engine);
    }
    let client = Client::from_controller(&controller, transport.clone()).await?;
    let ids = client.wait_for_engines(engines.len(), WAIT).await?;
    println!(
        "cluster of {} engines {ids:?} up in {:.2?}",
        ids.len(),
        started.elapsed()
    );

    let mut timings: Vec<(String, Duration)> = Vec::new();
    let lb = client.load_balanced_view();

    // 1. Digits of pi on one engine.
    let t = Instant::now();
    let digits: String = client
        .direct_view(&ids[..1])
        .apply("pi_digits", &args.digits)
        .await?
        .get(WAIT)
        .await?
        .remove(0);
    timings.push((
        format!("{} digits of pi on engine {}", args.digits, ids[0]),
        t.elapsed(),
    ));
    println!(
        "pi = {}.{}…",
        &digits[..1],
        &digits[1..51.min(digits.len())]
    );

    // 2. Digit statistics: chunks counted in parallel.
    let t = Instant::now();
    let chunk_len = digits.len().div_ceil(ids.len() * 4);
    let chunks: Vec<String> = digits
        .as_bytes()
        .chunks(chunk_len)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let counts: Vec<[u64; 10]> = lb
        .map("digit_counts", &chunks, MapOptions::default())
        .await?
        .get(WAIT)
        .await?;
    let mut totals = [0u64; 10];
    for count in &counts {
        for (total, n) in totals.iter_mut().zip(count) {
            *total += n;
        }
    }
    timings.push((
        format!("digit counts, {} chunks load-balanced", chunks.len()),
        t.elapsed(),
    ));
    let shown: Vec<String> = totals
        .iter()
        .enumerate()
        .map(|(d, n)| format!("{d}:{n}"))
        .collect();
    println!("digit frequencies: {}", shown.join(" "));

    // 3. Monte Carlo pi.
    let t = Instant::now();
    let samples = 1_000_000u64;
    let jobs: Vec<(u64, u64)> = (0..32).map(|seed| (samples, seed)).collect();
    let hits: Vec<u64> = lb
        .map("pi_hits", &jobs, MapOptions::default())
        .await?
        .get(WAIT)
        .await?;
    let estimate = 4.0 * hits.iter().sum::<u64>() as f64 / (samples * jobs.len() as u64) as f64;
    timings.push((
        format!("Monte Carlo pi, {} tasks of {samples} samples", jobs.len()),
        t.elapsed(),
    ));
    println!("Monte Carlo pi ≈ {estimate:.5}");

    // 4. The machinery itself: latency, throughput, bandwidth.
    let one = client.direct_view(&ids[..1]);
    let mut direct = Vec::new();
    let mut balanced = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        one.apply::<(), ()>("noop", &()).await?.get(WAIT).await?;
        direct.push(t.elapsed());
        let t = Instant::now();
        lb.apply::<(), ()>("noop", &()).await?.get(WAIT).await?;
        balanced.push(t.elapsed());
    }
    timings.push(("no-op round trip, direct (median)".into(), median(direct)));
    timings.push((
        "no-op round trip, load-balanced (median)".into(),
        median(balanced),
    ));

    let units = vec![(); args.tasks];
    let t = Instant::now();
    lb.map::<(), ()>("noop", &units, MapOptions::default())
        .await?
        .get(WAIT)
        .await?;
    let map_time = t.elapsed();
    timings.push((
        format!("{} no-op tasks, load-balanced map", args.tasks),
        map_time,
    ));

    let blob = Bytes::from(vec![7u8; 100 * 1024 * 1024]);
    let t = Instant::now();
    one.push_payloads(vec![("blob".to_owned(), Payload::raw(blob.clone()))])
        .await?
        .get(WAIT)
        .await?;
    let push_time = t.elapsed();
    let t = Instant::now();
    let back: Vec<Vec<Payload>> = one.pull_payloads(&["blob"]).await?.get(WAIT).await?;
    let pull_time = t.elapsed();
    let pulled = back.first().and_then(|values| values.first());
    anyhow::ensure!(
        pulled.is_some_and(|p| p.frames.first() == Some(&blob)),
        "pulled bytes differ from pushed bytes"
    );
    timings.push(("push 100 MB to one engine".into(), push_time));
    timings.push(("pull 100 MB from one engine".into(), pull_time));

    println!("\n| step | time |\n|---|---|");
    for (label, time) in &timings {
        println!("| {label} | {time:.2?} |");
    }
    println!(
        "\nthroughput {:.0} tasks/s; push {:.2} GB/s, pull {:.2} GB/s",
        args.tasks as f64 / map_time.as_secs_f64(),
        0.1 / push_time.as_secs_f64() * 1.048_576,
        0.1 / pull_time.as_secs_f64() * 1.048_576,
    );

    client.close().await;
    for engine in engines {
        engine.shutdown().await;
    }
    controller.shutdown().await;
    Ok(())
}
