//! The schemes × dependencies table (issue 5): load-balanced throughput and the controller's
//! CPU per task for each `--scheme`, with 0, 1 or 10 `after` dependencies per task.
//!
//! Task i depends on k tasks drawn (with a fixed seed, the same for every scheme) from the
//! 200 submitted just before it, so most of its parents are still queued or running when it
//! arrives. Cells are run round by round, every scheme once per round, so a slow spell of
//! this shared machine hits all schemes alike; each cell reports its median round.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use ipp::core::client::{AsyncResult, Client, One};
use ipp::core::scheduler::{scheme_by_name, EngineLoad, Pick};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{no_op_map, Args, Cluster, WAIT};

/// How far back a task's parents are drawn from.
const PARENT_WINDOW: usize = 200;

/// One measured cell.
#[derive(Clone, Copy, Debug)]
struct Sample {
    tasks_per_second: f64,
    controller_cpu_micros: f64,
}

/// Runs and prints the tables: the pick alone, then end to end.
pub(crate) async fn table(args: &Args) -> Result<()> {
    if args.schemes.is_empty() || args.deps.is_empty() {
        return Ok(());
    }
    pick_cost_table(args)?;
    let dir = tempfile::tempdir()?;
    let rounds = args.scheme_rounds.max(1);
    // samples[deps][scheme] = one Sample per round
    let mut samples = vec![vec![Vec::new(); args.schemes.len()]; args.deps.len()];
    for round in 0..rounds {
        for (d, &deps) in args.deps.iter().enumerate() {
            for (s, scheme) in args.schemes.iter().enumerate() {
                let seed = 0x5eed + (round * 1000 + deps) as u64;
                let sample = cell(args, scheme, deps, seed, dir.path()).await?;
                samples[d][s].push(sample);
            }
        }
    }
    println!(
        "\n{} no-op LB tasks per cell, hwm 1, {} engines, NoDB, median of {rounds} round(s); \
         in brackets: share of leastload's throughput / leastload's controller CPU",
        args.scheme_tasks, args.engines
    );
    let header: Vec<String> = args
        .deps
        .iter()
        .map(|d| format!("{d} deps: tasks/s | {d} deps: controller CPU/task"))
        .collect();
    println!("\n| scheme | {} |", header.join(" | "));
    println!("|---|{}", "---:|---:|".repeat(args.deps.len()));
    let base = args.schemes.iter().position(|s| s == "leastload");
    for (s, scheme) in args.schemes.iter().enumerate() {
        let mut cells = Vec::new();
        for per_deps in &samples {
            let here = median(&per_deps[s]);
            let reference = base.map(|b| median(&per_deps[b]));
            let (rate, cpu) = match reference {
                Some(r) => (
                    format!(
                        "{:.0} ({:.0}%)",
                        here.tasks_per_second,
                        100.0 * here.tasks_per_second / r.tasks_per_second
                    ),
                    format!(
                        "{:.0} µs ({:.0}%)",
                        here.controller_cpu_micros,
                        100.0 * here.controller_cpu_micros / r.controller_cpu_micros
                    ),
                ),
                None => (
                    format!("{:.0}", here.tasks_per_second),
                    format!("{:.0} µs", here.controller_cpu_micros),
                ),
            };
            cells.push(format!("{rate} | {cpu}"));
        }
        println!("| {scheme} | {} |", cells.join(" | "));
    }
    chain_row(args, dir.path()).await
}

/// What one `select` of each scheme costs, alone (CPU-bound, so the fastest of five runs is
/// the least disturbed by other processes).
fn pick_cost_table(args: &Args) -> Result<()> {
    const PICKS: usize = 200_000;
    let engine_counts = [2, 16, 128];
    println!(
        "\n| scheme | {} |\n|---|{}",
        engine_counts
            .map(|n| format!("one pick among {n} engines"))
            .join(" | "),
        "---:|".repeat(engine_counts.len())
    );
    for scheme in &args.schemes {
        let mut cells = Vec::new();
        for engines in engine_counts {
            let mut rng = StdRng::seed_from_u64(7);
            // A few load patterns, cycled, so the branch predictor cannot learn one.
            let patterns: Vec<Vec<EngineLoad>> = (0..64)
                .map(|_| {
                    (0..engines)
                        .map(|_| EngineLoad {
                            load: rng.gen_range(0..4),
                        })
                        .collect()
                })
                .collect();
            let mut picker = scheme_by_name(scheme)?;
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = Instant::now();
                for i in 0..PICKS {
                    let mut cx = Pick {
                        now: tokio::time::Instant::now(),
                        rng: &mut rng,
                    };
                    std::hint::black_box(picker.select(&patterns[i % patterns.len()], &mut cx));
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e9 / PICKS as f64);
            }
            cells.push(format!("{best:.0} ns"));
        }
        println!("| {scheme} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// A chain (each task after the previous one), submitted all at once: every task but the
/// running one is blocked, so this shows what one finished task costs the scheduler when
/// the blocked set is large.
async fn chain_row(args: &Args, dir: &Path) -> Result<()> {
    let tasks = args.scheme_tasks;
    let cluster = Cluster::start_with_scheme(args, "nodb", 1, "leastload", dir).await?;
    no_op_map(&cluster.client, 500.min(tasks)).await?; // warm up
    let cpu_before = cluster.controller.cpu();
    let t = Instant::now();
    let view = cluster.client.load_balanced_view();
    let mut pending: Vec<AsyncResult<(), One>> = Vec::with_capacity(tasks);
    let mut previous: Vec<String> = Vec::new();
    for _ in 0..tasks {
        let result = view
            .clone()
            .with_after(&previous)
            .apply::<(), ()>("noop", &())
            .await?;
        previous = result.msg_ids();
        pending.push(result);
    }
    for result in pending {
        result.get(WAIT).await?;
    }
    let rate = tasks as f64 / t.elapsed().as_secs_f64();
    let cpu = cluster.controller.cpu().per_task_since(cpu_before, tasks);
    cluster.stop().await?;
    println!(
        "\n| dependency graph | tasks | tasks/s | controller CPU per task |\n|---|---:|---:|---:|\n\
         | chain (each after the previous; all submitted at once) | {tasks} | {rate:.0} | {cpu} |"
    );
    Ok(())
}

/// The median round of one cell, by throughput (its CPU figure is that round's).
fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.tasks_per_second.total_cmp(&b.tasks_per_second));
    let mid = sorted[sorted.len() / 2];
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.controller_cpu_micros).collect();
    cpu.sort_by(f64::total_cmp);
    Sample {
        tasks_per_second: mid.tasks_per_second,
        controller_cpu_micros: cpu[cpu.len() / 2],
    }
}

/// Starts a controller with `scheme`, runs the tasks, stops it.
async fn cell(args: &Args, scheme: &str, deps: usize, seed: u64, dir: &Path) -> Result<Sample> {
    let cluster = Cluster::start_with_scheme(args, "nodb", 1, scheme, dir).await?;
    no_op_map(&cluster.client, 500.min(args.scheme_tasks)).await?; // warm up
    let cpu_before = cluster.controller.cpu();
    let t = Instant::now();
    let done = run_graph(&cluster.client, args.scheme_tasks, deps, seed).await?;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cluster.controller.cpu();
    cluster.stop().await?;
    if done != args.scheme_tasks {
        bail!(
            "{scheme}, {deps} deps: {done} of {} tasks finished",
            args.scheme_tasks
        );
    }
    let spent = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system);
    Ok(Sample {
        tasks_per_second: done as f64 / elapsed,
        controller_cpu_micros: spent / done as f64 * 1e6,
    })
}

/// Submits `tasks` no-ops, each after `deps` random recent ones; waits for every result.
async fn run_graph(client: &Client, tasks: usize, deps: usize, seed: u64) -> Result<usize> {
    let view = client.load_balanced_view();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut msg_ids: Vec<String> = Vec::with_capacity(tasks);
    let mut pending: Vec<AsyncResult<(), One>> = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let recent = &msg_ids[msg_ids.len().saturating_sub(PARENT_WINDOW)..];
        let result = if deps == 0 || recent.is_empty() {
            view.apply::<(), ()>("noop", &()).await?
        } else {
            let after: Vec<String> = (0..deps)
                .map(|_| recent[rng.gen_range(0..recent.len())].clone())
                .collect();
            view.clone()
                .with_after(&after)
                .apply::<(), ()>("noop", &())
                .await?
        };
        msg_ids.extend(result.msg_ids());
        pending.push(result);
    }
    let mut done = 0;
    for result in pending {
        result.get(WAIT).await?;
        done += 1;
    }
    Ok(done)
}
