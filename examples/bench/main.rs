//! `bench`: the Rust SDK end to end (Rust client, Rust engines, our controller, real ZeroMQ
//! on 127.0.0.1, all in this process) — latency, throughput, bandwidth, memory and the task
//! database's recording rate. Prints markdown tables for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example bench                  # the standard run
//! cargo run --release --example bench -- --quick       # a smoke run
//! cargo run --release --example bench -- --tasks 1000000 --stores nodb,dictdb   # memory
//! ```

// A benchmark's job is to print its table.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use ipp::core::client::{Client, MapOptions};
use ipp::core::controller::{Controller, ControllerConfig};
use ipp::core::engine::{Engine, RunningEngine, RustExecutor};
use ipp::core::serialize::Payload;
use ipp::core::store::{DictDb, DictDbConfig, NoDb, Store};
use ipp::store_sqlite::SqliteStore;
use ipp::transport_zmq::ZmqTransport;

/// Benchmarks the Rust SDK end to end.
#[derive(Debug, Parser)]
struct Args {
    /// Engines to start.
    #[arg(short = 'n', long, default_value_t = 2)]
    engines: usize,
    /// No-op tasks per throughput run.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 2_000)]
    latency: usize,
    /// Megabytes pushed and pulled.
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
    /// Task databases to run the throughput and memory test with (nodb, dictdb, sqlite).
    #[arg(long, value_delimiter = ',', default_value = "nodb,dictdb,sqlite")]
    stores: Vec<String>,
    /// A small, fast run.
    #[arg(long)]
    quick: bool,
}

const WAIT: Duration = Duration::from_secs(600);

/// A controller, engines and a client in this process.
struct Cluster {
    controller: Controller,
    engines: Vec<RunningEngine>,
    client: Client,
}

impl Cluster {
    async fn start(store: Arc<dyn Store>, hwm: usize, engines: usize) -> Result<Self> {
        let transport = Arc::new(ZmqTransport::new());
        let mut config = ControllerConfig::default();
        config.hwm = hwm;
        let controller = Controller::builder(config)
            .with_transport(transport.clone())
            .with_store(store)
            .start()
            .await?;
        let executor = RustExecutor::new();
        executor.register_infallible("noop", |(): ()| ());
        let executor = Arc::new(executor);
        let mut running = Vec::new();
        for _ in 0..engines {
            let engine = Engine::builder(controller.engine_info().clone())
                .with_transport(transport.clone())
                .with_executor(executor.clone());
            running.push(engine.start().await?);
        }
        let client = Client::from_controller(&controller, transport).await?;
        client.wait_for_engines(engines, WAIT).await?;
        Ok(Self {
            controller,
            engines: running,
            client,
        })
    }

    async fn stop(self) {
        self.client.close().await;
        for engine in self.engines {
            engine.shutdown().await;
        }
        self.controller.shutdown().await;
    }
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn median_micros(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

async fn no_op_map(client: &Client, tasks: usize) -> Result<f64> {
    let units = vec![(); tasks];
    let t = Instant::now();
    let results: Vec<()> = client
        .load_balanced_view()
        .map("noop", &units, MapOptions::default())
        .await?
        .get(WAIT)
        .await?;
    if results.len() != tasks {
        bail!("expected {tasks} results, got {}", results.len());
    }
    Ok(tasks as f64 / t.elapsed().as_secs_f64())
}

async fn latency_and_bandwidth(args: &Args) -> Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    let cluster = Cluster::start(Arc::new(NoDb), 1, args.engines).await?;
    let client = &cluster.client;
    let one = client.direct_view(&client.ids()[..1]);
    let lb = client.load_balanced_view();
    let (mut direct, mut balanced) = (Vec::new(), Vec::new());
    for _ in 0..args.latency {
        let t = Instant::now();
        one.apply::<(), ()>("noop", &()).await?.get(WAIT).await?;
        direct.push(t.elapsed());
        let t = Instant::now();
        lb.apply::<(), ()>("noop", &()).await?.get(WAIT).await?;
        balanced.push(t.elapsed());
    }
    rows.push((
        "no-op round trip, direct (median)".into(),
        format!("{:.0} µs", median_micros(direct)),
    ));
    rows.push((
        "no-op round trip, load-balanced (median)".into(),
        format!("{:.0} µs", median_micros(balanced)),
    ));

    let blob = Bytes::from(vec![1u8; args.megabytes * 1024 * 1024]);
    let t = Instant::now();
    one.push_payloads(vec![("blob".into(), Payload::raw(blob.clone()))])
        .await?
        .get(WAIT)
        .await?;
    let push = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pulled: Vec<Vec<Payload>> = one.pull_payloads(&["blob"]).await?.get(WAIT).await?;
    let pull = t.elapsed().as_secs_f64();
    let same = pulled
        .first()
        .and_then(|values| values.first())
        .is_some_and(|p| p.frames.first() == Some(&blob));
    if !same {
        bail!("pulled bytes differ from pushed bytes");
    }
    let gb = blob.len() as f64 / 1e9;
    rows.push((
        format!("push {} MB", args.megabytes),
        format!("{:.2} GB/s", gb / push),
    ));
    rows.push((
        format!("pull {} MB", args.megabytes),
        format!("{:.2} GB/s", gb / pull),
    ));
    cluster.stop().await;
    Ok(rows)
}

async fn store(name: &str, dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    Ok(match name {
        "nodb" => Arc::new(NoDb),
        "dictdb" => Arc::new(DictDb::with_config(
            // A limit above the task count, so nothing is culled while we measure.
            DictDbConfig::default().with_record_limit(usize::MAX / 2),
        )?),
        "sqlite" => Arc::new(SqliteStore::open(dir.join("tasks.db")).await?),
        other => bail!("unknown store {other:?}: use nodb, dictdb or sqlite"),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.tasks = args.tasks.min(5_000);
        args.latency = args.latency.min(200);
        args.megabytes = args.megabytes.min(10);
    }
    println!(
        "Rust client + {} Rust engines + controller in one process, ZeroMQ over 127.0.0.1, {} CPUs\n",
        args.engines,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measurement | result |\n|---|---|");
    for (label, value) in latency_and_bandwidth(&args)
        .await
        .context("latency and bandwidth")?
    {
        println!("| {label} | {value} |");
    }

    println!(
        "\n| store | hwm | {} no-op LB tasks | RSS before → after |\n|---|---|---|---|",
        args.tasks
    );
    let dir = tempfile::tempdir()?;
    for name in &args.stores {
        for hwm in [1, 0] {
            let cluster = Cluster::start(store(name, dir.path()).await?, hwm, args.engines).await?;
            no_op_map(&cluster.client, 1_000.min(args.tasks)).await?; // warm up
            let before = rss_mib();
            let rate = no_op_map(&cluster.client, args.tasks).await?;
            let after = rss_mib();
            println!("| {name} | {hwm} | {rate:.0} tasks/s | {before:.0} → {after:.0} MiB |");
            cluster.stop().await;
            if name == "sqlite" {
                std::fs::remove_file(dir.path().join("tasks.db")).ok();
            }
        }
    }
    Ok(())
}
