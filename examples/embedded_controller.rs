//! Embedding: a controller built from parts chosen in code (ZeroMQ transport, in-memory
//! task database, the `twobin` scheme), two Rust engines and a client, in one program.
#![allow(clippy::print_stdout)] // an example prints what it did

use std::{sync::Arc, time::Duration};

use ipp::core::client::{Client, MapOptions};
use ipp::core::controller::{Controller, ControllerConfig};
use ipp::core::engine::{Engine, RustExecutor};
use ipp::core::{scheduler::TwoBin, store::DictDb};
use ipp::transport_zmq::ZmqTransport;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let transport = Arc::new(ZmqTransport::new()); // every socket on 127.0.0.1, real TCP
    let controller = Controller::builder(ControllerConfig::default())
        .with_transport(transport.clone())
        .with_store(Arc::new(DictDb::default()))
        .with_scheme(Box::new(TwoBin))
        .start()
        .await?;
    let executor = Arc::new(RustExecutor::new());
    executor.register_infallible("square", |x: i64| x * x);
    let mut engines = Vec::new();
    for _ in 0..2 {
        let engine = Engine::builder(controller.engine_info().clone())
            .with_transport(transport.clone())
            .with_executor(executor.clone());
        engines.push(engine.start().await?);
    }
    let client = Client::from_controller(&controller, transport).await?;
    client.wait_for_engines(2, Duration::from_secs(30)).await?;
    let items: Vec<i64> = (1..=10).collect();
    let view = client.load_balanced_view();
    let result = view.map("square", &items, MapOptions::default()).await?;
    let squares: Vec<i64> = result.get(Duration::from_secs(30)).await?;
    println!("squares of 1..=10: {squares:?}");
    client.close().await;
    for engine in engines {
        engine.shutdown().await;
    }
    controller.shutdown().await;
    Ok(())
}
