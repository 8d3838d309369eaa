//! Connecting sockets: reconnecting with backoff.
//!
//! A connecting socket here is a loop: build a fresh
//! ZMTP socket, connect it (one attempt bounded by `connect_timeout`), drive it until
//! the connection closes, then wait and start over. Waits double from
//! [`FIRST_RETRY`] up to `max_reconnect_interval` and reset after a successful connection.
//! Meanwhile the user's messages wait in the socket's bounded send queue (a PUB's are
//! dropped, as ZeroMQ drops what no subscriber takes).

use std::future;
use std::time::Duration;

use bytes::Bytes;
use ipp_core::transport::{Frames, SocketKind, SocketOptions};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::link::Link;
use crate::raw::{Monitor, RawSocket, RecvHalf, SendHalf};
use crate::session::{Driver, Mode, Outcome};
use crate::zmtp::ConnError;

/// The first pause before reconnecting.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Keeps a connecting socket connected until the user drops it.
pub(crate) async fn run(mut driver: Driver, address: String, options: SocketOptions) {
    let max_retry = options.max_reconnect_interval.max(FIRST_RETRY);
    let mut retry = FIRST_RETRY;
    loop {
        let kind = driver.kind;
        let attempt = tokio::select! {
            _ = &mut driver.ends.stop => return,
            () = discard_if_pub(kind, &mut driver.ends.outgoing, &driver.link) => return,
            attempt = connect_once(kind, &address, &driver.subscriptions, &options) => attempt,
        };
        match attempt {
            Ok((send, recv, monitor)) => {
                tracing::info!("connected");
                retry = FIRST_RETRY;
                let link = std::sync::Arc::clone(&driver.link);
                link.connected(send).await;
                let outcome = driver.run(recv, Some(monitor), Mode::Connected).await;
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

/// One connection attempt with a fresh socket (TCP connect and handshake), bounded by
/// `connect_timeout`.
async fn connect_once(
    kind: SocketKind,
    address: &str,
    subscriptions: &[Bytes],
    options: &SocketOptions,
) -> Result<(SendHalf, RecvHalf, Monitor)> {
    let mut socket = RawSocket::new(kind, options)?;
    // Subscriptions first: they are sent to every peer as it connects.
    socket.subscribe(subscriptions);
    let monitor = socket.monitor();
    let timeout = options.connect_timeout;
    let connected = match tokio::time::timeout(timeout, socket.connect(address, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(ConnError::Timeout(timeout)),
    };
    connected.map_err(|source| Error::Connect {
        address: address.to_owned(),
        source,
    })?;
    let (send, recv) = socket.split();
    Ok((send, recv, monitor))
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
