//! Recording throughput: 100,000 tasks, each an `add` (as the Hub records a request) and
//! an `update` (its result), into a fresh SQLite file; time until everything is committed.
//!
//! The records are built before the clock starts, so the caller's time is the store's
//! calls alone. Ids are shaped like jupyter_client's (`<session>_<pid>_<counter>`).
//! CPU times are per thread, from `/proc/self/task/*/schedstat` (Linux): the caller (the
//! main thread, standing for the Hub's), the writer, and the checkpointer.
//!
//! `cargo bench -p ipp-store-sqlite` (or `cargo run --release --bench throughput`); set
//! `IPP_BENCH_RECORDS` to change the count and `IPP_BENCH_ROWS` (`1000x1000,100x10000`) to
//! choose the `batch_size x queue_capacity` rows.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use bytes::Bytes;
use ipp_core::protocol::date;
use ipp_core::store::{JsonObject, RecordUpdate, Store, TaskRecord};
use ipp_store_sqlite::{SqliteConfig, SqliteStore};
use serde_json::json;

/// The client session all the bench's tasks come from.
const SESSION: &str = "5f3c2a9e-8d41-4b7a-9c06-1e2f3a4b5c6d";

fn msg_id(i: usize) -> String {
    format!("{SESSION}_4242_{i}")
}

/// An object as the Hub records it: the JSON text a sender wrote, kept as received.
fn received(value: serde_json::Value) -> Option<JsonObject> {
    Some(JsonObject::from_json(Bytes::from(value.to_string())).unwrap())
}

fn request(i: usize) -> TaskRecord {
    let now = date::now();
    let header = json!({"msg_id": msg_id(i), "msg_type": "apply_request",
        "session": SESSION, "username": "bench", "date": date::format(&now), "version": "5.4"});
    let mut rec = TaskRecord::new(msg_id(i));
    rec.header = received(header);
    rec.metadata = received(json!({"after": [], "follow": [], "targets": [], "retries": 0}));
    rec.content = received(json!({}));
    rec.buffers = vec![
        Bytes::from_static(&[0x80; 64]),
        Bytes::from_static(&[1; 32]),
    ];
    rec.submitted = Some(now);
    rec.client_uuid = Some(SESSION.to_owned());
    rec.queue = Some("task".to_owned());
    rec
}

fn result() -> RecordUpdate {
    let now = date::now();
    RecordUpdate {
        engine_uuid: Some("engine-0".to_owned()),
        started: Some(now),
        completed: Some(now),
        received: Some(now),
        result_header: received(json!({"msg_type": "apply_reply", "date": date::format(&now)})),
        result_metadata: received(json!({"status": "ok", "engine": "engine-0"})),
        result_content: received(json!({"status": "ok"})),
        result_buffers: Some(vec![Bytes::from_static(&[0x80; 48])]),
        ..RecordUpdate::default()
    }
}

/// CPU time and time spent runnable but waiting for a CPU, in seconds.
#[derive(Clone, Copy, Default)]
struct Cpu {
    run: f64,
    waited: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, other: Cpu) -> Cpu {
        Cpu {
            run: self.run - other.run,
            waited: self.waited - other.waited,
        }
    }
}

/// `schedstat` of one thread of this process (Linux): nanoseconds on a CPU, nanoseconds
/// runnable and waiting for one.
fn schedstat(task: &std::path::Path) -> Cpu {
    let text = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().unwrap_or(0.0) / 1e9);
    Cpu {
        run: fields.next().unwrap_or(0.0),
        waited: fields.next().unwrap_or(0.0),
    }
}

/// The live thread named `comm` (Linux truncates names to 15 characters).
fn thread_cpu(comm: &str) -> Cpu {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Cpu::default();
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.trim() == comm {
            return schedstat(&task.path());
        }
    }
    Cpu::default()
}

/// The main thread, which runs the caller (`block_on`).
fn caller_cpu() -> Cpu {
    schedstat(std::path::Path::new(&format!(
        "/proc/self/task/{}",
        std::process::id()
    )))
}

/// Every thread of the process.
fn process_cpu() -> Cpu {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Cpu::default();
    };
    tasks.flatten().fold(Cpu::default(), |sum, task| {
        let cpu = schedstat(&task.path());
        Cpu {
            run: sum.run + cpu.run,
            waited: sum.waited + cpu.waited,
        }
    })
}

struct Row {
    queued: f64,
    total: f64,
    high_water: usize,
    all: Cpu,
    caller: Cpu,
    writer: Cpu,
    checkpointer: Cpu,
}

async fn run(count: usize, batch_size: usize, queue_capacity: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("tasks.db"))
        .with_batch_size(batch_size)
        .with_queue_capacity(queue_capacity);
    let store = SqliteStore::open_with(config).await.unwrap();
    let tasks: Vec<(TaskRecord, RecordUpdate)> =
        (0..count).map(|i| (request(i), result())).collect();
    let ids: Vec<String> = (0..count).map(msg_id).collect();
    let (all_start, caller_start) = (process_cpu(), caller_cpu());
    let start = Instant::now();
    for ((record, update), id) in tasks.into_iter().zip(&ids) {
        store.add(record).await.unwrap();
        store.update(id, update).await.unwrap();
    }
    let queued = start.elapsed().as_secs_f64();
    let caller = caller_cpu() - caller_start;
    store.flush().await.unwrap();
    let total = start.elapsed().as_secs_f64();
    let all = process_cpu() - all_start;
    // Both threads started after `open_with`, so their whole lives are the run.
    let writer = thread_cpu("ipp-sqlite-writ");
    let checkpointer = thread_cpu("ipp-sqlite-chec");
    assert_eq!(store.history().await.unwrap().len(), count);
    let high_water = store.queue_high_water_mark();
    store.close().await.unwrap();
    Row {
        queued,
        total,
        high_water,
        all,
        caller,
        writer,
        checkpointer,
    }
}

/// The `(batch_size, queue_capacity)` rows to run: `IPP_BENCH_ROWS` as `1000x1000,100x10000`,
/// or the default set.
fn rows() -> Vec<(usize, usize)> {
    let default = vec![(1, 10_000), (100, 10_000), (1000, 10_000), (1000, 1_000)];
    let Ok(spec) = std::env::var("IPP_BENCH_ROWS") else {
        return default;
    };
    spec.split(',')
        .filter_map(|row| {
            let (batch, queue) = row.trim().split_once('x')?;
            Some((batch.parse().ok()?, queue.parse().ok()?))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("IPP_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    println!(
        "{count} tasks = {count} adds + {count} updates, fresh file each row; \
         CPU from schedstat (\"waited\" = runnable but waiting for a CPU)"
    );
    println!(
        "| batch_size | queue | caller (s) | committed (s) | tasks/s | caller CPU per call (µs) \
         | writer CPU (s) | tasks per writer CPU-s | checkpointer CPU (s) | CPU all (s) \
         | waited for a CPU, all (s) | hwm |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (batch_size, capacity) in rows() {
        let row = run(count, batch_size, capacity).await;
        println!(
            "| {batch_size} | {capacity} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            row.queued,
            row.total,
            count as f64 / row.total,
            row.caller.run * 1e6 / (2 * count) as f64,
            row.writer.run,
            count as f64 / row.writer.run.max(0.001),
            row.checkpointer.run,
            row.all.run,
            row.all.waited,
            row.high_water,
        );
    }
}
