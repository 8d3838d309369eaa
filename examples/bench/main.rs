//! `bench`: the Rust SDK end to end (Rust client and Rust engines in this process, our
//! controller in a child process — this same program, re-run with `--serve-controller` — so
//! its memory is measured on its own; real ZeroMQ on 127.0.0.1) — latency, throughput,
//! bandwidth, controller memory and the task database's recording rate. Prints markdown
//! tables for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example bench                  # the standard run
//! cargo run --release --example bench -- --quick       # a smoke run
//! cargo run --release --example bench -- --tasks 1000000 --stores nodb,dictdb   # memory
//! cargo run --release --example bench -- --schemes-only   # schemes × dependencies tables
//! ```

// A benchmark's job is to print its table.
#![allow(clippy::print_stdout)]

mod schemes;

/// The allocator: glibc's malloc was ~10% of the controller's CPU per task; mimalloc (built
/// without transparent huge pages) gave +20-25% tasks/s in `bench` (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use ipp::core::busy_poll::BusyPoll;
use ipp::core::client::{BlockingClient, Client, ClientConfig, MapOptions};
use ipp::core::controller::{Controller, ControllerConfig};
use ipp::core::engine::{Engine, EngineBuilder, RunningEngine, RustExecutor};
use ipp::core::protocol::{ClientConnectionInfo, EngineConnectionInfo};
use ipp::core::serialize::Payload;
use ipp::core::store::{DictDb, DictDbConfig, NoDb, Store};
use ipp::core::transport::Transport;
use ipp::store_mongo::{MongoConfig, MongoStore};
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
    /// Times the push and the pull are each repeated: the first pays for fresh memory
    /// everywhere, the repeats show a process that keeps moving large data.
    #[arg(long, default_value_t = 3)]
    bandwidth_rounds: usize,
    /// Task databases to run the throughput test with (nodb, dictdb, dictdb-culled, sqlite,
    /// mongodb: needs a MongoDB-wire server at `--mongo-url`).
    #[arg(long, value_delimiter = ',', default_value = "nodb,dictdb,sqlite")]
    stores: Vec<String>,
    /// Times the throughput test runs each store at each hwm. Runs alternate between the
    /// stores (every store at hwm 1, then at hwm 0, then the next round), and with NoDB
    /// among the stores a last table gives each store's throughput relative to NoDB's in
    /// the same round, and the median: on a shared machine one run's noise is ±15%.
    #[arg(long, default_value_t = 1)]
    store_rounds: usize,
    /// No-op tasks the controller-memory test runs, in windows of `--window` tasks.
    #[arg(long, default_value_t = 1_000_000)]
    memory_tasks: usize,
    /// Tasks in flight at once in the memory test (one `map` per window).
    #[arg(long, default_value_t = 20_000)]
    window: usize,
    /// Task databases of the memory test (`dictdb-culled` is DictDB with ipyparallel's
    /// default limits; `dictdb` keeps every record).
    #[arg(long, value_delimiter = ',', default_value = "nodb,dictdb-culled")]
    memory_stores: Vec<String>,
    /// A small, fast run.
    #[arg(long)]
    quick: bool,
    /// Run the schemes × dependencies tables (issue 5) instead of the standard tables.
    #[arg(long)]
    schemes_only: bool,
    /// Load-balancing schemes of the schemes table (empty: skip the table).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "leastload,lru,plainrandom,twobin,weighted"
    )]
    schemes: Vec<String>,
    /// Dependencies per task in the schemes table (`after`, on random earlier tasks).
    #[arg(long, value_delimiter = ',', default_value = "0,1,10")]
    deps: Vec<usize>,
    /// Tasks per cell of the schemes table.
    #[arg(long, default_value_t = 20_000)]
    scheme_tasks: usize,
    /// Rounds of the schemes table; each cell reports the median round.
    #[arg(long, default_value_t = 3)]
    scheme_rounds: usize,
    /// Run each engine in a process of its own (this program re-run with
    /// `--serve-engine`) instead of beside the client: the client, the controller and
    /// every engine then wake one another across processes, as with `ipengine`.
    #[arg(long)]
    engine_processes: bool,
    /// Internal: run only a controller with `--store` and `--hwm`, print its connection
    /// info as one JSON line, and stop when stdin closes.
    #[arg(long, hide = true)]
    serve_controller: bool,
    /// Internal: run one engine for the controller whose engine connection info (JSON) this
    /// is, and stop when stdin closes.
    #[arg(long, hide = true)]
    serve_engine: Option<String>,
    /// Internal (with `--serve-controller`): the task database.
    #[arg(long, hide = true, default_value = "nodb")]
    store: String,
    /// Internal (with `--serve-controller`): the high-water mark.
    #[arg(long, hide = true, default_value_t = 1)]
    hwm: usize,
    /// Internal (with `--serve-controller`): the load-balancing scheme.
    #[arg(long, hide = true, default_value = "leastload")]
    scheme: String,
    /// The MongoDB-wire server of the `mongodb` store (e.g. one started with
    /// `nx-27017 --db memory --host 127.0.0.1 -p 27017`).
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    mongo_url: String,
    /// Internal (with `--serve-controller`): where the SQLite file goes.
    #[arg(long, hide = true)]
    store_dir: Option<PathBuf>,
    /// The controller child's tokio runtime: `current` (one thread, as `ipcontroller` runs)
    /// or `multi` (a worker per CPU).
    #[arg(long, default_value = "current")]
    controller_runtime: String,
    /// This process's tokio runtime (the client and the engines): `current` (one thread;
    /// the no-op runs inline, so nothing here needs a second one, and half the context
    /// switches of `multi` on two CPUs) or `multi` (a worker per CPU).
    #[arg(long, default_value = "current")]
    runtime: String,
    /// Both processes keep polling their sockets this many microseconds after data arrives
    /// before they sleep (`ipp_core::busy_poll`; the default is `ipcontroller`'s and
    /// `ipengine`'s); 0: sleep at once.
    #[arg(long, default_value_t = ipp::core::busy_poll::DEFAULT_WINDOW.as_micros() as u64)]
    busy_poll_us: u64,
}

/// What the controller child prints: how to connect to it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildInfo {
    client: ClientConnectionInfo,
    engine: EngineConnectionInfo,
}

/// `--serve-controller`: the child's whole life.
async fn serve_controller(args: &Args) -> Result<()> {
    let dir = args.store_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut config = ControllerConfig::default();
    config.hwm = args.hwm;
    config.scheme.clone_from(&args.scheme);
    let controller = Controller::builder(config)
        .with_transport(Arc::new(ZmqTransport::new()))
        .with_store(store(&args.store, &dir, &args.mongo_url).await?)
        .start()
        .await?;
    let info = ChildInfo {
        client: controller.client_info().clone(),
        engine: controller.engine_info().clone(),
    };
    println!("{}", serde_json::to_string(&info)?);
    // The parent closes our stdin (or dies) when it is done with us.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    controller.shutdown().await;
    Ok(())
}

/// The engine with this bench's functions (`noop`).
fn engine_builder(info: EngineConnectionInfo, transport: Arc<dyn Transport>) -> EngineBuilder {
    let executor = RustExecutor::new();
    // A no-op returns in nanoseconds: run it on the engine's task, not the blocking pool.
    executor.register_inline_infallible("noop", |(): ()| ());
    Engine::builder(info)
        .with_transport(transport)
        .with_executor(Arc::new(executor))
}

/// `--serve-engine`: an engine child's whole life.
async fn serve_engine(info: &str) -> Result<()> {
    let info: EngineConnectionInfo =
        serde_json::from_str(info).context("--serve-engine takes engine connection JSON")?;
    let engine = engine_builder(info, Arc::new(ZmqTransport::new()))
        .start()
        .await?;
    // The parent closes our stdin (or dies) when it is done with us.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    engine.shutdown().await;
    Ok(())
}

/// Checks that a recording store holds a finished record of each of the `tasks` run so far
/// and says how long the query took (it waits for the store's
/// queued writes): the store's lag behind routing. "—" for NoDB.
async fn check_recorded(client: &Client, store: &str, tasks: usize) -> Result<String> {
    if store == "nodb" {
        return Ok("—".to_owned());
    }
    let t = Instant::now();
    let records = client
        .db_query(
            serde_json::json!({"completed": {"$ne": null}}),
            Some(&["msg_id"]),
        )
        .await?;
    let lag = t.elapsed().as_secs_f64();
    if records.len() < tasks {
        bail!(
            "the {store} store holds {} finished records of {tasks} tasks: records were lost",
            records.len()
        );
    }
    Ok(format!("yes (query answered in {lag:.2} s)"))
}

/// Controller memory over many tasks, run in windows the way a streaming user would, so the
/// backlog held by the controller is bounded and any growth is per-task state.
async fn memory_table(args: &Args, dir: &Path) -> Result<()> {
    let window = args.window.max(1);
    let rounds = args.memory_tasks.div_ceil(window);
    println!(
        "\n| store | controller RSS after warm-up | after {} tasks | after {} | after {} | tasks/s | controller CPU per task |\n|---|---|---|---|---|---|---|",
        window,
        (rounds / 2).max(1) * window,
        rounds * window,
    );
    for name in &args.memory_stores {
        let cluster = Cluster::start(args, name, 1, dir).await?;
        no_op_map(&cluster.client, 1_000.min(window)).await?;
        let warm = cluster.controller.rss_mib();
        let (mut first, mut middle) = (f64::NAN, f64::NAN);
        let cpu_before = cluster.controller.cpu();
        let t = Instant::now();
        for round in 1..=rounds {
            no_op_map(&cluster.client, window).await?;
            if round == 1 {
                first = cluster.controller.rss_mib();
            }
            if round == (rounds / 2).max(1) {
                middle = cluster.controller.rss_mib();
            }
        }
        let rate = (rounds * window) as f64 / t.elapsed().as_secs_f64();
        let cpu = cluster
            .controller
            .cpu()
            .per_task_since(cpu_before, rounds * window);
        let last = cluster.controller.rss_mib();
        println!(
            "| {name} | {warm:.0} MiB | {first:.0} MiB | {middle:.0} MiB | {last:.0} MiB | {rate:.0} | {cpu} |"
        );
        cluster.stop().await?;
    }
    Ok(())
}

/// How the controller child is configured.
struct ControllerSetup<'a> {
    store: &'a str,
    hwm: usize,
    scheme: &'a str,
    runtime: &'a str,
    mongo_url: &'a str,
    busy_poll_us: u64,
}

/// The controller child process, seen from the parent.
struct ControllerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    info: ChildInfo,
}

impl ControllerProcess {
    async fn start(setup: &ControllerSetup<'_>, dir: &Path) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--serve-controller",
                "--store",
                setup.store,
                "--hwm",
                &setup.hwm.to_string(),
                "--scheme",
                setup.scheme,
                "--controller-runtime",
                setup.runtime,
                "--mongo-url",
                setup.mongo_url,
                "--busy-poll-us",
                &setup.busy_poll_us.to_string(),
            ])
            .arg("--store-dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the controller child process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the child's stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let info: ChildInfo = serde_json::from_str(&line)
            .with_context(|| format!("the controller child printed {line:?}"))?;
        Ok(Self { child, stdin, info })
    }

    /// Resident memory of the controller process, in MiB.
    fn rss_mib(&self) -> f64 {
        rss_mib_of(&format!("/proc/{}/status", self.child.id()))
    }

    /// CPU time the controller process has used so far.
    fn cpu(&self) -> CpuTime {
        CpuTime::of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// CPU time the controller's main thread (the one that runs its runtime, with the
    /// current-thread runtime: every socket, the Hub and the schedulers) has used so far.
    fn main_thread_cpu(&self) -> CpuTime {
        let pid = self.child.id();
        CpuTime::of(&format!("/proc/{pid}/task/{pid}/stat"))
    }

    async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = tokio::task::spawn_blocking(move || self.child.wait()).await??;
        if !status.success() {
            bail!("the controller child exited with {status}");
        }
        Ok(())
    }
}

/// An engine child process (`--serve-engine`), seen from the parent.
struct EngineProcess {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl EngineProcess {
    fn start(info: &EngineConnectionInfo, args: &Args) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-engine")
            .arg(serde_json::to_string(info)?)
            .args(["--busy-poll-us", &args.busy_poll_us.to_string()])
            .args(["--runtime", &args.runtime])
            .stdin(Stdio::piped())
            .spawn()
            .context("starting an engine child process")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = tokio::task::spawn_blocking(move || self.child.wait()).await??;
        if !status.success() {
            bail!("an engine child exited with {status}");
        }
        Ok(())
    }
}

const WAIT: Duration = Duration::from_secs(600);

/// A controller child process, and engines and a client in this process (or the
/// engines in child processes of their own, with `--engine-processes`).
struct Cluster {
    controller: ControllerProcess,
    engines: Vec<RunningEngine>,
    engine_processes: Vec<EngineProcess>,
    client: Client,
}

impl Cluster {
    async fn start(args: &Args, store: &str, hwm: usize, dir: &Path) -> Result<Self> {
        Self::start_with_scheme(args, store, hwm, "leastload", dir).await
    }

    async fn start_with_scheme(
        args: &Args,
        store: &str,
        hwm: usize,
        scheme: &str,
        dir: &Path,
    ) -> Result<Self> {
        let engines = args.engines;
        let transport = Arc::new(ZmqTransport::new());
        let setup = ControllerSetup {
            store,
            hwm,
            scheme,
            runtime: &args.controller_runtime,
            mongo_url: &args.mongo_url,
            busy_poll_us: args.busy_poll_us,
        };
        let controller = ControllerProcess::start(&setup, dir).await?;
        let mut running = Vec::new();
        let mut engine_processes = Vec::new();
        for _ in 0..engines {
            if args.engine_processes {
                engine_processes.push(EngineProcess::start(&controller.info.engine, args)?);
            } else {
                let engine = engine_builder(controller.info.engine.clone(), transport.clone());
                running.push(engine.start().await?);
            }
        }
        let client = Client::connect(controller.info.client.clone(), transport).await?;
        client.wait_for_engines(engines, WAIT).await?;
        Ok(Self {
            controller,
            engines: running,
            engine_processes,
            client,
        })
    }

    /// CPU time the client and the engines have used so far: this process, and the
    /// engines' processes when they have their own.
    fn client_and_engines_cpu(&self) -> CpuTime {
        self.engine_processes
            .iter()
            .map(|engine| CpuTime::of(&format!("/proc/{}/stat", engine.child.id())))
            .fold(CpuTime::of("/proc/self/stat"), CpuTime::plus)
    }

    async fn stop(self) -> Result<()> {
        self.client.close().await;
        for engine in self.engines {
            engine.shutdown().await;
        }
        for engine in self.engine_processes {
            engine.stop().await?;
        }
        self.controller.stop().await
    }
}

/// Resident memory of a process from its `/proc/<pid>/status`, in MiB.
fn rss_mib_of(status_file: &str) -> f64 {
    std::fs::read_to_string(status_file)
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

/// CPU time a process has used, in seconds: (user, system), every thread.
#[derive(Clone, Copy, Debug)]
struct CpuTime {
    user: f64,
    system: f64,
}

impl CpuTime {
    /// Reads `/proc/<pid>/stat` (Linux reports CPU time in clock ticks of `USER_HZ`, which
    /// is 100 on every Linux ABI we run on).
    fn of(stat_file: &str) -> Self {
        const USER_HZ: f64 = 100.0;
        let ticks = std::fs::read_to_string(stat_file).ok().and_then(|stat| {
            // The command name (field 2) may contain spaces: fields are counted after ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime, stime))
        });
        let (user, system) = ticks.unwrap_or((f64::NAN, f64::NAN));
        Self {
            user: user / USER_HZ,
            system: system / USER_HZ,
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }

    /// The CPU time used since `earlier` per task, and the CPUs that kept busy at `rate`
    /// tasks per second, as a table cell: a process or thread near one CPU (or a machine
    /// near all of them) is what sets the pace.
    fn busy_since(self, earlier: Self, tasks: usize, rate: f64) -> String {
        let seconds = (self.user - earlier.user) + (self.system - earlier.system);
        let per_task = seconds / tasks as f64;
        format!("{:.0} µs · {:.2} CPUs", per_task * 1e6, per_task * rate)
    }

    /// The CPU time used since `earlier`, per task, as a table cell: total (user + system).
    fn per_task_since(self, earlier: Self, tasks: usize) -> String {
        let per = |now: f64, then: f64| (now - then) / tasks as f64 * 1e6;
        let user = per(self.user, earlier.user);
        let system = per(self.system, earlier.system);
        format!("{:.0} µs ({user:.0} user + {system:.0} sys)", user + system)
    }
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
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(args, "nodb", 1, dir.path()).await?;
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
    let before = CpuTime::of("/proc/self/stat");
    let blocking = blocking_round_trips(
        cluster.controller.info.client.clone(),
        client.ids()[0],
        args.latency,
    )
    .await?;
    let cpu = CpuTime::of("/proc/self/stat").per_task_since(before, args.latency);
    rows.push((
        "no-op round trip, direct, BlockingClient (median)".into(),
        format!(
            "{:.0} µs (CPU per round trip, client and engines: {cpu})",
            median_micros(blocking)
        ),
    ));

    let blob = Bytes::from(vec![1u8; args.megabytes * 1024 * 1024]);
    let (mut pushes, mut pulls) = (Vec::new(), Vec::new());
    for _ in 0..args.bandwidth_rounds.max(1) {
        let t = Instant::now();
        one.push_payloads(vec![("blob".into(), Payload::raw(blob.clone()))])
            .await?
            .get(WAIT)
            .await?;
        pushes.push(t.elapsed());
        let t = Instant::now();
        let pulled: Vec<Vec<Payload>> = one.pull_payloads(&["blob"]).await?.get(WAIT).await?;
        pulls.push(t.elapsed());
        let same = pulled
            .first()
            .and_then(|values| values.first())
            .is_some_and(|p| p.frames.first() == Some(&blob));
        if !same {
            bail!("pulled bytes differ from pushed bytes");
        }
    }
    let gb = blob.len() as f64 / 1e9;
    for (name, times) in [("push", pushes), ("pull", pulls)] {
        let rate = |time: Duration| format!("{:.2} GB/s", gb / time.as_secs_f64());
        let first = rate(times[0]);
        let cell = if times.len() > 1 {
            let repeats = times[1..].to_vec();
            let median = Duration::from_secs_f64(median_micros(repeats) / 1e6);
            format!("{first} first, {} repeated (median)", rate(median))
        } else {
            first
        };
        rows.push((format!("{name} {} MB", args.megabytes), cell));
    }
    cluster.stop().await?;
    Ok(rows)
}

/// Direct no-op round trips from a [`BlockingClient`] (its own runtime, called from a
/// plain thread as a synchronous program would) to engine `target`.
async fn blocking_round_trips(
    info: ClientConnectionInfo,
    target: u32,
    rounds: usize,
) -> Result<Vec<Duration>> {
    tokio::task::spawn_blocking(move || -> Result<Vec<Duration>> {
        let client =
            BlockingClient::connect(info, Arc::new(ZmqTransport::new()), ClientConfig::default())?;
        let one = client.direct_view(&[target]);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            one.apply::<(), ()>("noop", &())?;
            times.push(t.elapsed());
        }
        client.close();
        Ok(times)
    })
    .await?
}

async fn store(name: &str, dir: &Path, mongo_url: &str) -> Result<Arc<dyn Store>> {
    Ok(match name {
        "nodb" => Arc::new(NoDb),
        "dictdb" => Arc::new(DictDb::with_config(
            // A limit above the task count, so nothing is culled while we measure.
            DictDbConfig::default().with_record_limit(usize::MAX / 2),
        )?),
        "dictdb-culled" => Arc::new(DictDb::with_config(DictDbConfig::default())?),
        "sqlite" => Arc::new(SqliteStore::open(dir.join("tasks.db")).await?),
        "mongodb" => Arc::new(
            MongoStore::connect(MongoConfig::default().with_url(mongo_url))
                .await
                .with_context(|| format!("connecting to the MongoDB-wire server {mongo_url}"))?,
        ),
        other => {
            bail!("unknown store {other:?}: use nodb, dictdb, dictdb-culled, sqlite or mongodb")
        }
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let busy_poll = BusyPoll::new(Duration::from_micros(args.busy_poll_us));
    if args.serve_controller {
        let runtime = build_runtime(&args.controller_runtime, "--controller-runtime", &busy_poll)?;
        return runtime.block_on(serve_controller(&args));
    }
    let runtime = build_runtime(&args.runtime, "--runtime", &busy_poll)?;
    if let Some(info) = &args.serve_engine {
        return runtime.block_on(serve_engine(info));
    }
    runtime.block_on(run(args))
}

/// A tokio runtime of the given flavour (`current` or `multi`), named for errors by `flag`.
fn build_runtime(
    flavour: &str,
    flag: &str,
    busy_poll: &BusyPoll,
) -> Result<tokio::runtime::Runtime> {
    let mut builder = match flavour {
        "current" => tokio::runtime::Builder::new_current_thread(),
        "multi" => tokio::runtime::Builder::new_multi_thread(),
        other => bail!("unknown {flag} {other:?}: use current or multi"),
    };
    Ok(busy_poll.build(&mut builder)?)
}

async fn run(mut args: Args) -> Result<()> {
    if args.quick {
        args.tasks = args.tasks.min(5_000);
        args.latency = args.latency.min(200);
        args.megabytes = args.megabytes.min(10);
        args.memory_tasks = args.memory_tasks.min(4_000);
        args.window = args.window.min(1_000);
        args.scheme_tasks = args.scheme_tasks.min(500);
        args.scheme_rounds = 1;
    }
    if args.schemes_only {
        return schemes::table(&args).await;
    }
    println!(
        "Rust client + {} Rust engines {} ({} runtime), the controller in another process \
         ({} runtime), ZeroMQ over 127.0.0.1, busy polling {} µs, {} CPUs\n",
        args.engines,
        if args.engine_processes {
            "each in a process of its own"
        } else {
            "in one process"
        },
        args.runtime,
        args.controller_runtime,
        args.busy_poll_us,
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
        "\n| store | hwm | {} no-op LB tasks | controller CPU per task | of it, the controller's main thread | client + engines CPU per task | controller RSS before → after | every task recorded |\n|---|---|---|---|---|---|---|---|",
        args.tasks
    );
    let dir = tempfile::tempdir()?;
    let mut rates = StoreRates::default();
    for _ in 0..args.store_rounds.max(1) {
        for hwm in [1, 0] {
            for name in &args.stores {
                let rate = store_throughput_row(&args, name, hwm, dir.path()).await?;
                rates.push(name, hwm, rate);
            }
        }
    }
    rates.print_relative_to_nodb();
    memory_table(&args, dir.path()).await
}

/// Each store's throughput in each round, by hwm.
#[derive(Default)]
struct StoreRates(Vec<(String, usize, f64)>);

impl StoreRates {
    fn push(&mut self, store: &str, hwm: usize, rate: f64) {
        self.0.push((store.to_owned(), hwm, rate));
    }

    /// The rates of `store` at `hwm`, in round order.
    fn of(&self, store: &str, hwm: usize) -> Vec<f64> {
        self.0
            .iter()
            .filter(|(name, at, _)| name == store && *at == hwm)
            .map(|(_, _, rate)| *rate)
            .collect()
    }

    /// Prints each store's throughput over NoDB's in the same round, and the median.
    fn print_relative_to_nodb(&self) {
        let mut stores: Vec<&str> = Vec::new();
        for (name, _, _) in &self.0 {
            if name != "nodb" && !stores.contains(&name.as_str()) {
                stores.push(name);
            }
        }
        if stores.is_empty() || self.of("nodb", 1).is_empty() {
            return;
        }
        println!(
            "\n| store | hwm | throughput / NoDB's in the same round | median |\n|---|---|---|---|"
        );
        for store in stores {
            for hwm in [1, 0] {
                let mut ratios: Vec<f64> = self
                    .of(store, hwm)
                    .iter()
                    .zip(self.of("nodb", hwm))
                    .map(|(rate, nodb)| 100.0 * rate / nodb)
                    .collect();
                let each: Vec<String> = ratios.iter().map(|r| format!("{r:.0}%")).collect();
                ratios.sort_by(f64::total_cmp);
                let median = match ratios.len() {
                    0 => continue,
                    n if n % 2 == 1 => ratios[n / 2],
                    n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
                };
                println!("| {store} | {hwm} | {} | {median:.0}% |", each.join(" · "));
            }
        }
    }
}

/// Runs `name`'s throughput test at `hwm`, prints its row, and returns its tasks/s.
async fn store_throughput_row(args: &Args, name: &str, hwm: usize, dir: &Path) -> Result<f64> {
    let cluster = Cluster::start(args, name, hwm, dir).await?;
    no_op_map(&cluster.client, 1_000.min(args.tasks)).await?; // warm up
    let before = cluster.controller.rss_mib();
    let cpu_before = cluster.controller.cpu();
    let main_before = cluster.controller.main_thread_cpu();
    let client_before = cluster.client_and_engines_cpu();
    let rate = no_op_map(&cluster.client, args.tasks).await?;
    let cpu = cluster
        .controller
        .cpu()
        .per_task_since(cpu_before, args.tasks);
    let main = cluster
        .controller
        .main_thread_cpu()
        .busy_since(main_before, args.tasks, rate);
    let client_side = cluster
        .client_and_engines_cpu()
        .busy_since(client_before, args.tasks, rate);
    let after = cluster.controller.rss_mib();
    let recorded =
        check_recorded(&cluster.client, name, 1_000.min(args.tasks) + args.tasks).await?;
    println!(
        "| {name} | {hwm} | {rate:.0} tasks/s | {cpu} | {main} | {client_side} | {before:.0} → {after:.0} MiB | {recorded} |"
    );
    cluster.stop().await?;
    if name == "sqlite" {
        std::fs::remove_file(dir.join("tasks.db")).ok();
    }
    Ok(rate)
}
