//! Recording throughput: 100,000 tasks, each an `add` (as the Hub records a request) and
//! an `update` (its result), into a fresh SQLite file; time until everything is committed.
//!
//! `cargo bench -p ipp-store-sqlite` (or `cargo run --release --bench throughput`); set
//! `IPP_BENCH_RECORDS` to change the count.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use bytes::Bytes;
use ipp_core::protocol::date;
use ipp_core::store::{RecordUpdate, Store, TaskRecord};
use ipp_store_sqlite::{SqliteConfig, SqliteStore};
use serde_json::json;

fn request(i: usize) -> TaskRecord {
    let now = date::now();
    let header = json!({"msg_id": format!("msg-{i}"), "msg_type": "apply_request",
        "session": "client", "username": "bench", "date": date::format(&now), "version": "5.4"});
    let mut rec = TaskRecord::new(format!("msg-{i}"));
    rec.header = header.as_object().cloned();
    rec.metadata = json!({"after": [], "follow": [], "targets": [], "retries": 0})
        .as_object()
        .cloned();
    rec.content = Some(Default::default());
    rec.buffers = vec![
        Bytes::from_static(&[0x80; 64]),
        Bytes::from_static(&[1; 32]),
    ];
    rec.submitted = Some(now);
    rec.client_uuid = Some("client".to_owned());
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
        result_header: json!({"msg_type": "apply_reply", "date": date::format(&now)})
            .as_object()
            .cloned(),
        result_metadata: json!({"status": "ok", "engine": "engine-0"})
            .as_object()
            .cloned(),
        result_content: json!({"status": "ok"}).as_object().cloned(),
        result_buffers: Some(vec![Bytes::from_static(&[0x80; 48])]),
        ..RecordUpdate::default()
    }
}

/// CPU seconds this process has used (user + system), from /proc (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the man page, counted from the state field (3).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by the store's writer thread (named `ipp-sqlite-writer`,
/// truncated to 15 characters by Linux), from /proc.
fn writer_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "ipp-sqlite-writ" {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            return (ticks(11) + ticks(12)) / 100.0;
        }
    }
    0.0
}

async fn run(
    count: usize,
    batch_size: usize,
    queue_capacity: usize,
) -> (f64, f64, usize, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("tasks.db"))
        .with_batch_size(batch_size)
        .with_queue_capacity(queue_capacity);
    let store = SqliteStore::open_with(config).await.unwrap();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    for i in 0..count {
        store.add(request(i)).await.unwrap();
        store.update(&format!("msg-{i}"), result()).await.unwrap();
    }
    let queued = start.elapsed().as_secs_f64();
    store.flush().await.unwrap();
    let total = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let writer_cpu = writer_cpu_seconds();
    assert_eq!(store.history().await.unwrap().len(), count);
    let high_water = store.queue_high_water_mark();
    store.close().await.unwrap();
    (queued, total, high_water, cpu, writer_cpu)
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("IPP_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    println!("{count} tasks = {count} adds + {count} updates, fresh file each row");
    println!("| batch_size | queue_capacity | caller time (s) | committed (s) | records/s | CPU (s, all threads) | writer CPU (s) | tasks per writer CPU-second | queue high-water mark |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (batch_size, capacity) in [(1, 10_000), (100, 10_000), (1000, 10_000), (1000, 1_000)] {
        let (queued, total, high_water, cpu, writer_cpu) = run(count, batch_size, capacity).await;
        println!(
            "| {batch_size} | {capacity} | {queued:.2} | {total:.2} | {:.0} | {cpu:.2} | {writer_cpu:.2} | {:.0} | {high_water} |",
            count as f64 / total,
            count as f64 / writer_cpu.max(0.01),
        );
    }
}
