//! Connecting sockets: reconnecting with backoff.
//!
//! A connecting socket here is one ZMTP socket and a loop: connect it (one attempt bounded
//! by `connect_timeout`), send what the user queued until the connection closes, then wait
//! and connect again. Waits double from
//! [`FIRST_RETRY`] up to `max_reconnect_interval` and reset after a successful connection.
//! Meanwhile the user's messages wait in the socket's bounded send queue (a PUB's are
//! dropped, as ZeroMQ drops what no subscriber takes).

use std::future;
use std::sync::Arc;
use std::time::Duration;

use ipp_core::transport::{Frames, SocketKind, SocketOptions};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::link::Link;
use crate::raw::{Monitor, SendHalf};
use crate::session::{Driver, Mode, Outcome};
use crate::zmtp::ConnError;

/// The first pause before reconnecting.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Keeps a connecting socket connected until the user drops it.
pub(crate) async fn run(
    mut driver: Driver,
    socket: SendHalf,
    mut monitor: Monitor,
    address: String,
    options: SocketOptions,
) {
    let max_retry = options.max_reconnect_interval.max(FIRST_RETRY);
    let mut retry = FIRST_RETRY;
    loop {
        let kind = driver.kind;
        // Events of connections already gone must not end the next session.
        while monitor.try_recv().is_ok() {}
        let attempt = tokio::select! {
            _ = &mut driver.ends.stop => return,
            () = discard_if_pub(kind, &mut driver.ends.outgoing, &driver.link) => return,
            attempt = connect_once(&socket, &address, &options) => attempt,
        };
        match attempt {
            Ok(()) => {
                tracing::info!("connected");
                retry = FIRST_RETRY;
                let link = Arc::clone(&driver.link);
                link.connected(Arc::clone(&socket)).await;
                let outcome = driver.run(None, Some(&mut monitor), Mode::Connected).await;
                link.disconnected().await;
                match outcome {
                    Outcome::Stopped => return,
                    Outcome::Disconnected => {
                        tracing::info!(retry_in = ?retry, "disconnected; reconnecting")
                    }
                }
            }
            Err(error) => tracing::debug!(%error, retry_in = ?retry, "connection attempt failed"),
        }
        tokio::select! {
            _ = &mut driver.ends.stop => return,
            () = discard_if_pub(kind, &mut driver.ends.outgoing, &driver.link) => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(max_retry);
    }
}

/// One connection attempt (TCP connect and handshake), bounded by `connect_timeout`.
async fn connect_once(socket: &SendHalf, address: &str, options: &SocketOptions) -> Result<()> {
    let timeout = options.connect_timeout;
    let host_port = crate::address::host_port(address);
    let connected = match tokio::time::timeout(timeout, socket.connect(host_port, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(ConnError::Timeout(timeout)),
    };
    connected.map_err(|source| Error::Connect {
        address: address.to_owned(),
        source,
    })
}

/// While a PUB is disconnected, drops what the user publishes (ZeroMQ's PUB semantics)
/// instead of letting the queue fill and block the user. Never resolves for other kinds.
///
/// # Cancel safety
/// Cancel-safe: it only discards messages.
async fn discard_if_pub(kind: SocketKind, outgoing: &mut mpsc::Receiver<Frames>, link: &Link) {
    if kind != SocketKind::Pub {
        return future::pending().await;
    }
    while outgoing.recv().await.is_some() {
        drop(link.taken());
        tracing::trace!("PUB not connected; message dropped");
    }
    // Every sender is gone; stay until the user drops the receiving half too.
    future::pending().await
}
