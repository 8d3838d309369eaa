//! Every Store conformance check against a real MongoDB-wire server: `nx-27017` from PyPI,
//! started here on 127.0.0.1 (`$IPP_TEST_NX27017`, else beside `$IPP_TEST_PYTHON`, else
//! `<repo>/.venv-test/bin/nx-27017`) and stopped by its pid at the end. A fresh database
//! per check.
//!
//! A custom harness (`harness = false`): the server must outlive every check and be
//! stopped after the last one, which libtest has no hook for.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use ipp_core::protocol::date;
use ipp_core::store::{RecordUpdate, Store, TaskRecord};
use ipp_core::testing::store as suite;
use ipp_store_mongo::{MongoConfig, MongoStore};

/// The server process; killed (by pid) and reaped on drop.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, the server cannot remove its own files: the pid file, its log and ours.
        for extension in ["pid", "server.log", "log"] {
            let _ = std::fs::remove_file(self.log.with_extension(extension));
        }
    }
}

fn nx_27017() -> PathBuf {
    if let Some(path) = std::env::var_os("IPP_TEST_NX27017").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    // Beside the test Python that scripts/test.sh exports (it may live in another venv).
    if let Some(python) = std::env::var_os("IPP_TEST_PYTHON").filter(|p| !p.is_empty()) {
        if let Some(candidate) = PathBuf::from(python)
            .parent()
            .map(|dir| dir.join("nx-27017"))
        {
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/nx-27017")
}

fn start_server() -> Server {
    let exe = nx_27017();
    assert!(
        exe.exists(),
        "the MongoDB-wire test server {} does not exist: run scripts/setup-test-env.sh \
         (it installs nx-27017 into .venv-test) or set IPP_TEST_NX27017",
        exe.display()
    );
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("no free port")
        .port();
    let stem = std::env::temp_dir().join(format!("ipp-nx27017-{}", std::process::id()));
    let log = stem.with_extension("log");
    let log_file = std::fs::File::create(&log).expect("cannot create the server log");
    // nx-27017 refuses to start while another instance's pid file (by default the
    // machine-wide /tmp/nx_27017.pid) names a live process: give this one its own files.
    let child = Command::new(&exe)
        .args([
            "--db",
            "memory",
            "--host",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg("--pid-file")
        .arg(stem.with_extension("pid"))
        .arg("--log-file")
        .arg(stem.with_extension("server.log"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log handle"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", exe.display()));
    let mut server = Server {
        child,
        url: format!("mongodb://127.0.0.1:{port}"),
        log,
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "{} exited with {status} before listening; log:\n{}",
                exe.display(),
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within 60 s; log:\n{}",
            exe.display(),
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Check = for<'a> fn(&'a dyn Store) -> BoxFuture<'a, ()>;

macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        fn checks() -> Vec<(&'static str, Check)> {
            vec![$((stringify!($check), |store| Box::pin(suite::$check(store)))),*]
        }
    };
}

checks!(
    add_then_get_round_trips_every_field,
    add_twice_is_already_exists,
    update_changes_only_given_fields,
    get_unknown_is_not_found,
    string_operators,
    date_operators,
    combined_conditions,
    in_and_nin,
    ne_null_means_present,
    key_projection,
    drop_matching,
    drop_records,
    history_in_submission_order,
    find_10k_records,
    received_messages_are_recorded,
    nodb_answers_reads_with_unsupported,
);

async fn fresh(url: &str, name: &str) -> MongoStore {
    let config = MongoConfig::new()
        .with_url(url)
        .with_database(format!("ipp-test-{name}-{}", std::process::id()));
    MongoStore::connect(config).await.expect("connect")
}

/// A new store on the same database sees what an earlier one wrote (controller restart).
async fn a_new_store_on_the_same_database_sees_old_records(url: String) {
    let first = fresh(&url, "restart").await;
    let mut rec = TaskRecord::new("old");
    rec.submitted = date::parse("2026-01-01T00:00:00.654321Z");
    rec.buffers = vec![Bytes::from_static(b"req")];
    first.add(rec).await.unwrap();
    let done = RecordUpdate {
        completed: date::parse("2026-01-01T00:00:01.000001Z"),
        append_stdout: Some("hi".to_owned()),
        result_buffers: Some(vec![Bytes::from_static(b"res")]),
        ..RecordUpdate::default()
    };
    first.update("old", done).await.unwrap();
    drop(first);
    let second = fresh(&url, "restart").await;
    assert_eq!(second.history().await.unwrap(), ["old"]);
    let old = second.get("old").await.unwrap();
    assert_eq!(old.completed, date::parse("2026-01-01T00:00:01.000001Z"));
    assert_eq!(old.stdout, "hi");
    assert_eq!(old.result_buffers, vec![Bytes::from_static(b"res")]);
    second.drop_database().await.unwrap();
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let server = start_server();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failed: Vec<String> = Vec::new();
    let mut ran = 0;
    let checks = checks();
    assert_eq!(
        checks.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        suite::CHECKS,
        "the list of conformance checks is incomplete"
    );
    for (name, check) in checks {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let url = server.url.clone();
        let started = Instant::now();
        let outcome = runtime.block_on(async move {
            tokio::spawn(async move {
                let store = fresh(&url, name).await;
                check(&store).await;
                store.drop_database().await.unwrap();
            })
            .await
        });
        match outcome {
            Ok(()) => println!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name.to_owned());
            }
        }
    }
    if filter.as_deref().is_none_or(|f| "restart".contains(f)) {
        ran += 1;
        let url = server.url.clone();
        let outcome = runtime.block_on(async move {
            tokio::spawn(a_new_store_on_the_same_database_sees_old_records(url)).await
        });
        match outcome {
            Ok(()) => println!("test a_new_store_on_the_same_database_sees_old_records ... ok"),
            Err(_) => failed.push("a_new_store_on_the_same_database_sees_old_records".to_owned()),
        }
    }
    drop(runtime);
    drop(server);
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}
