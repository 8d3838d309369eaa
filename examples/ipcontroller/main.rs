//! `ipcontroller`: the reference controller binary, a drop-in for ipyparallel's.
//!
//! ```text
//! cargo run --release --example ipcontroller -- --ip=127.0.0.1 --ping=1000
//! ipengine                     # real ipyparallel engines find the connection files
//! python -c "import ipyparallel as ipp; print(ipp.Client().ids)"
//! ```

mod profile;
mod store;

/// The allocator: glibc's malloc was ~10% of the controller's CPU per task; mimalloc (built
/// without transparent huge pages) gave +20-25% tasks/s in `bench` (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipp::core::busy_poll::BusyPoll;
use ipp::core::controller::{Controller, ControllerConfig};
use ipp::core::protocol::ConnectionFiles;
use ipp::transport_zmq::ZmqTransport;

/// Starts an IPython Parallel controller (Hub + schedulers) that real ipyparallel clients
/// and engines use as they would `ipcontroller`.
#[derive(Debug, Parser)]
#[command(name = "ipcontroller", version, about)]
struct Args {
    /// The IPython profile to use (its directory is `$IPYTHONDIR/profile_<name>`).
    #[arg(long, default_value = "default")]
    profile: String,
    /// The profile directory; overrides --profile and $IPP_PROFILE_DIR.
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    /// IP address to listen on; `*` means every interface.
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Host name or IP that engines and clients use to reach this machine.
    #[arg(long)]
    location: Option<String>,
    /// Heartbeat period in milliseconds.
    #[arg(long)]
    ping: Option<u64>,
    /// Log level: DEBUG, INFO, WARN, ERROR, CRITICAL, or 10..50.
    #[arg(long, default_value = "INFO")]
    log_level: String,
    /// Keep task records in memory (the default).
    #[arg(long, conflicts_with_all = ["nodb", "sqlitedb", "mongodb"])]
    dictdb: bool,
    /// Record nothing; queries of the task database answer with an error.
    #[arg(long, conflicts_with_all = ["sqlitedb", "mongodb"])]
    nodb: bool,
    /// Record tasks in SQLite, in `<profile_dir>/tasks.db` unless `[store]` in the profile's
    /// `ipcontroller.toml` says otherwise.
    #[arg(long, conflicts_with = "mongodb")]
    sqlitedb: bool,
    /// Record tasks in MongoDB (`[store]` `url`, `database` in `ipcontroller.toml`).
    #[arg(long)]
    mongodb: bool,
    /// Restore the previous session: reuse its connection files (implies --reuse), take back
    /// its engines from `<profile_dir>/log/engines<cluster_id>.json` (each rejoins with its
    /// id on its first heartbeat) and, with a persistent store (--sqlitedb, or --mongodb with
    /// a fixed `database`), keep its task records.
    #[arg(long)]
    restore: bool,
    /// Load-balancing scheme: leastload, lru, plainrandom, twobin, weighted.
    #[arg(long)]
    scheme: Option<String>,
    /// Most tasks outstanding per engine from the task scheduler (0 = unlimited).
    #[arg(long)]
    hwm: Option<usize>,
    /// Cluster id: connection files are named `ipcontroller-<id>-{client,engine}.json`.
    #[arg(long, env = "IPP_CLUSTER_ID", default_value = "")]
    cluster_id: String,
    /// Reuse the existing connection files (key and ports) and keep them on exit.
    #[arg(long)]
    reuse: bool,
    /// Ports to use, e.g. `10101-10120` or `10101,10102,…` (random free ports otherwise).
    #[arg(long, value_parser = parse_ports)]
    ports: Option<Vec<u16>>,
    /// Keep polling the sockets this many microseconds after data arrives before sleeping:
    /// replies that come back within it are read without a wake-up (see
    /// `ipp_core::busy_poll`). 0 sleeps at once (no spinning, slower round trips).
    #[arg(long, default_value_t = ipp::core::busy_poll::DEFAULT_WINDOW.as_micros() as u64)]
    busy_poll_us: u64,
}

fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |_| format!("{part:?} is not a port or a range like 10101-10120");
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high): (u16, u16) =
                    (low.parse().map_err(bad)?, high.parse().map_err(bad)?);
                if low > high {
                    return Err(format!("empty port range {part:?}"));
                }
                ports.extend(low..=high);
            }
            None => ports.push(part.parse().map_err(bad)?),
        }
    }
    Ok(ports)
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

/// Reads `<profile>/ipcontroller.toml` if it exists: the controller's settings at the top
/// level, the task database's in an optional `[store]` table.
fn read_config(
    profile_dir: &std::path::Path,
) -> Result<(ControllerConfig, Option<store::StoreConfig>)> {
    let path = profile_dir.join("ipcontroller.toml");
    if !path.exists() {
        return Ok((ControllerConfig::default(), None));
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let store = table
        .remove("store")
        .map(|value| value.try_into::<store::StoreConfig>())
        .transpose()
        .with_context(|| format!("{}: bad [store] table", path.display()))?;
    let config = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("{} is not a valid controller configuration", path.display()))?;
    Ok((config, store))
}

fn main() {
    let args = Args::parse();
    // One thread: the controller's work per message is small, and a single-threaded
    // runtime avoids the cross-thread wake-ups that dominated its CPU profile
    // (BENCHMARKS.md). Store I/O still runs on tokio's blocking pool.
    let runtime = match BusyPoll::new(Duration::from_micros(args.busy_poll_us))
        .build(&mut tokio::runtime::Builder::new_current_thread())
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ipcontroller: error: cannot start the async runtime: {err}");
            std::process::exit(2);
        }
    };
    let outcome = runtime.block_on(run(args));
    if let Err(err) = outcome {
        eprintln!("ipcontroller: error: {err:#}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(log_filter(&args.log_level).unwrap_or("info"))
    });
    log_filter(&args.log_level)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs usually go to files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let profile_dir = profile::resolve_profile_dir(args.profile_dir.as_deref(), &args.profile)?;
    profile::create_profile_dir(&profile_dir)?;
    let files = ConnectionFiles::in_profile(&profile_dir, &args.cluster_id);

    let (mut config, store_config) = read_config(&profile_dir)?;
    let choice = store::choose(
        store::Flags {
            dictdb: args.dictdb,
            nodb: args.nodb,
            sqlitedb: args.sqlitedb,
            mongodb: args.mongodb,
        },
        store_config,
    );
    if args.restore && !choice.is_persistent() {
        tracing::info!(
            "--restore with a task database that does not outlive the controller: engines \
             and connection files are restored, task records are not (--sqlitedb keeps them)"
        );
    }
    let reuse = args.reuse || args.restore;
    config.engine_state_file = Some(
        profile_dir
            .join("log")
            .join(format!("engines{}.json", args.cluster_id)),
    );
    config.restore_engines = args.restore;
    config.ip = if args.ip == "*" {
        "0.0.0.0".into()
    } else {
        args.ip.clone()
    };
    config.location = args.location.clone().unwrap_or_else(profile::host_name);
    if let Some(ping) = args.ping {
        config.heartbeat_period_ms = ping;
    }
    if let Some(scheme) = &args.scheme {
        config.scheme = scheme.clone();
    }
    if let Some(hwm) = args.hwm {
        config.hwm = hwm;
    }
    if let Some(ports) = &args.ports {
        config.ports = ports.clone();
    }
    if let Ok(key) = std::env::var("IPP_SESSION_KEY") {
        config.key = key;
    }
    if reuse && files.client.exists() && files.engine.exists() {
        let (client, engine) = files.read()?;
        tracing::info!(file = %files.client.display(), "reusing connection files");
        config.key = client.key.clone();
        config.ports = vec![
            client.registration,
            client.notification,
            client.mux,
            engine.mux,
            client.control,
            engine.control,
            client.task,
            engine.task,
            engine.iopub,
            client.iopub,
            engine.hb_ping,
            engine.hb_pong,
            client.broadcast,
        ];
        config.ports.extend(&engine.broadcast);
    }

    let store = store::open(choice, &profile_dir).await?;
    let controller = Controller::builder(config)
        .with_transport(Arc::new(ZmqTransport::new()))
        .with_store(store.shared())
        .start()
        .await
        .context("cannot start the controller")?;
    files
        .write(controller.client_info(), controller.engine_info())
        .context("cannot write the connection files")?;
    tracing::info!(client = %files.client.display(), engine = %files.engine.display(),
        "connection files written");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
        () = controller.stopped() => tracing::info!("shutdown requested by a client"),
    }
    if !reuse {
        files.remove();
    }
    controller.shutdown().await;
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_lists_and_ranges() {
        assert_eq!(parse_ports("1,3-5").unwrap(), vec![1, 3, 4, 5]);
        assert!(parse_ports("5-1").is_err());
        assert!(parse_ports("x").is_err());
    }
}
