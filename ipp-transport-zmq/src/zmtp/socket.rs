//! ROUTER, DEALER, PUB and SUB sockets over ZMTP connections.
//!
//! A socket is a table of live connections ([`Shared`]) plus an [`Inbox`] of their readers.
//! Sending looks up the connection(s) and writes in the caller's task; receiving polls the
//! readers in the caller's task, fair-queued. Tasks exist only where nobody else would
//! act: accepting connections (and their handshakes), reading a PUB's subscriptions, and
//! flushing a connection whose kernel buffer is full.

use std::collections::HashMap;
use std::future::poll_fn;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ipp_core::transport::{Frames, SocketKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codec;
use super::conn::{self, Conn, ConnError, Incoming, Reader};

/// How long an accepted connection may take to finish its handshake.
const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer connected or disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A connection finished its handshake.
    Connected,
    /// A connection closed.
    Disconnected,
}

/// Why a send did not go out.
#[derive(Debug)]
pub(crate) enum SendError {
    /// A DEALER with no connection: the message, given back.
    NoPeer(Frames),
    /// A ROUTER has no peer with this routing id (or it just went away).
    UnknownPeer,
    /// The peer's outbox is full: the message, given back, and the connection to wait for.
    Full(Frames, Arc<Conn>),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoPeer(_) => f.write_str("no connected peer"),
            Self::UnknownPeer => f.write_str("no peer with this routing id"),
            Self::Full(..) => f.write_str("the peer's outbox is full"),
        }
    }
}

/// The live connections.
#[derive(Debug, Default)]
struct Peers {
    /// In connection order (DEALER round-robin, PUB fan-out, SUB subscriptions).
    list: Vec<Arc<Conn>>,
    /// A ROUTER's peers by routing id.
    by_id: HashMap<Bytes, Arc<Conn>>,
    /// Next DEALER peer to send to.
    next: usize,
}

/// What the sending and receiving halves of one socket share.
#[derive(Debug)]
pub(crate) struct Shared {
    kind: SocketKind,
    /// The identity we announce (ROUTER, DEALER).
    identity: Bytes,
    peers: Mutex<Peers>,
    /// A SUB's subscriptions, sent to every peer that connects.
    subscriptions: Mutex<Vec<Bytes>>,
    /// New connections' readers, for the [`Inbox`].
    new_readers: mpsc::UnboundedSender<Reader>,
    events: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    /// Routing ids generated for peers without an identity.
    next_id: AtomicU32,
    /// Cancelled when the socket is dropped: stops every task of the socket.
    cancel: CancellationToken,
    /// Second handles on the listening sockets, shut down when the socket is dropped: the
    /// ports are free again at once (a controller restarted on the same ports in the same
    /// process binds them), not only once the accept tasks have run and closed theirs.
    listeners: Mutex<Vec<socket2::Socket>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.stop_listening();
    }
}

impl Shared {
    /// Stops accepting connections and frees the bound ports now (the accept tasks' own
    /// copies of the listening sockets see an error, then the cancel, and close later).
    pub(crate) fn stop_listening(&self) {
        let listeners = std::mem::take(
            &mut *self
                .listeners
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for listener in listeners {
            let _ = listener.shutdown(std::net::Shutdown::Both);
        }
    }

    fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn emit(&self, event: Event) {
        let events = self
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(events) = events.as_ref() {
            let _ = events.send(event);
        }
    }

    /// A routing id for a peer without an identity: 0x00 and a counter, as libzmq does.
    fn generated_id(&self) -> Bytes {
        let mut id = BytesMut::with_capacity(5);
        id.put_u8(0);
        id.put_u32(self.next_id.fetch_add(1, Ordering::Relaxed));
        id.freeze()
    }

    /// Adds a connection whose handshake is done.
    fn attach(self: &Arc<Self>, stream: TcpStream, info: conn::PeerInfo, decoder: codec::Decoder) {
        let routing_id = if self.kind == SocketKind::Router && !info.identity.is_empty() {
            info.identity
        } else {
            self.generated_id()
        };
        let conn = Arc::new(Conn::new(stream, routing_id, self.cancel.child_token()));
        if self.kind == SocketKind::Sub {
            let subscriptions = self
                .subscriptions
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            if !subscriptions.is_empty() {
                let chunks = subscriptions
                    .iter()
                    .flat_map(|prefix| {
                        codec::encode_message(&[codec::subscription_message(true, prefix)])
                    })
                    .collect();
                if let Err(error) = conn.write(chunks) {
                    tracing::debug!(%error, "cannot subscribe on a new connection");
                    return;
                }
            }
        }
        {
            let mut peers = self.peers();
            peers.list.push(Arc::clone(&conn));
            if self.kind == SocketKind::Router {
                if let Some(old) = peers
                    .by_id
                    .insert(conn.routing_id.clone(), Arc::clone(&conn))
                {
                    tracing::debug!(
                        peer = %String::from_utf8_lossy(&conn.routing_id),
                        "a new connection took over a routing id"
                    );
                    peers.list.retain(|other| !Arc::ptr_eq(other, &old));
                }
            }
        }
        let prefix = (self.kind == SocketKind::Router).then(|| conn.routing_id.clone());
        let reader = Reader::new(Arc::clone(&conn), decoder, prefix);
        if self.kind == SocketKind::Pub {
            tokio::spawn(read_subscriptions(Arc::downgrade(self), reader));
        } else if self.new_readers.send(reader).is_err() {
            conn.close();
        }
        self.emit(Event::Connected);
    }

    /// Removes a closed (or failed) connection.
    fn detach(&self, conn: &Arc<Conn>) {
        conn.close();
        let mut peers = self.peers();
        let before = peers.list.len();
        peers.list.retain(|other| !Arc::ptr_eq(other, conn));
        let removed = peers.list.len() != before;
        if self.kind == SocketKind::Router
            && peers
                .by_id
                .get(&conn.routing_id)
                .is_some_and(|current| Arc::ptr_eq(current, conn))
        {
            peers.by_id.remove(&conn.routing_id);
        }
        drop(peers);
        if removed {
            self.emit(Event::Disconnected);
        }
    }

    /// Makes one connection to `host:port` and runs its handshake; the connection is then
    /// one of this socket's peers.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        host_port: &str,
        timeout: Duration,
    ) -> Result<(), ConnError> {
        let stream = TcpStream::connect(host_port).await?;
        let (info, decoder) = conn::handshake(&stream, self.kind, &self.identity, timeout).await?;
        self.attach(stream, info, decoder);
        Ok(())
    }

    /// Writes an encoded message to `conn`; a failed connection is removed.
    fn write(&self, conn: &Arc<Conn>, chunks: Vec<Bytes>) -> bool {
        match conn.write(chunks) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, "write failed; connection closed");
                self.detach(conn);
                false
            }
        }
    }

    /// Sends one message if it can go now.
    pub(crate) fn try_send(&self, frames: Frames) -> Result<(), SendError> {
        match self.kind {
            SocketKind::Router => {
                let Some(id) = frames.first() else {
                    return Ok(());
                };
                let conn = self.peers().by_id.get(id).cloned();
                let Some(conn) = conn else {
                    return Err(SendError::UnknownPeer);
                };
                if conn.is_full() {
                    return Err(SendError::Full(frames, conn));
                }
                if self.write(&conn, codec::encode_message(&frames[1..])) {
                    Ok(())
                } else {
                    Err(SendError::UnknownPeer)
                }
            }
            SocketKind::Dealer => loop {
                let conn = {
                    let mut peers = self.peers();
                    if peers.list.is_empty() {
                        return Err(SendError::NoPeer(frames));
                    }
                    let count = peers.list.len();
                    let start = peers.next % count;
                    let found = (0..count)
                        .map(|step| (start + step) % count)
                        .find(|&index| !peers.list[index].is_full());
                    match found {
                        Some(index) => {
                            peers.next = index + 1;
                            Arc::clone(&peers.list[index])
                        }
                        None => {
                            let conn = Arc::clone(&peers.list[start]);
                            return Err(SendError::Full(frames, conn));
                        }
                    }
                };
                if self.write(&conn, codec::encode_message(&frames)) {
                    return Ok(());
                }
                // That connection just failed: try the others.
            },
            SocketKind::Pub => {
                self.publish(std::slice::from_ref(&frames));
                Ok(())
            }
            SocketKind::Sub => Ok(()),
        }
    }

    /// A PUB's send of `batch`, in order: each subscriber gets the messages it subscribed
    /// to in one write. A subscriber whose outbox is full misses them (a PUB never waits).
    pub(crate) fn publish(&self, batch: &[Frames]) {
        let mut encoded: Vec<Option<Vec<Bytes>>> = vec![None; batch.len()];
        let mut failed = Vec::new();
        {
            let peers = self.peers();
            for conn in &peers.list {
                if conn.is_full() {
                    continue;
                }
                let mut chunks = Vec::new();
                for (frames, encoded) in batch.iter().zip(encoded.iter_mut()) {
                    let topic = frames.first().map_or(&[][..], |topic| &topic[..]);
                    if subscribed(conn, topic) {
                        chunks.extend(
                            encoded
                                .get_or_insert_with(|| codec::encode_message(frames))
                                .iter()
                                .cloned(),
                        );
                    }
                }
                if !chunks.is_empty() && conn.write(chunks).is_err() {
                    failed.push(Arc::clone(conn));
                }
            }
        }
        for conn in failed {
            self.detach(&conn);
        }
    }

    /// Sends one message, waiting while the peer's outbox is full.
    pub(crate) async fn send(&self, mut frames: Frames) -> Result<(), SendError> {
        loop {
            match self.try_send(frames) {
                Err(SendError::Full(back, conn)) => {
                    conn.room().await;
                    frames = back;
                }
                other => return other,
            }
        }
    }
}

/// Whether a PUB's peer subscribed to a prefix of `topic`.
fn subscribed(conn: &Conn, topic: &[u8]) -> bool {
    conn.subscriptions
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .iter()
        .any(|prefix| topic.starts_with(prefix))
}

/// A PUB's reader of one peer: applies its subscriptions until the connection closes.
async fn read_subscriptions(shared: Weak<Shared>, mut reader: Reader) {
    let cancel = reader.conn.cancel.clone();
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => break,
            incoming = reader.next() => incoming,
        };
        let (subscribe, prefix) = match incoming {
            Ok(Incoming::Subscription(subscribe, prefix)) => (subscribe, prefix),
            Ok(Incoming::Message(frames)) => match frames.first().and_then(|f| f.first()) {
                Some(&flag @ (0 | 1)) if frames.len() == 1 => (flag == 1, frames[0].slice(1..)),
                _ => continue, // not a subscription: a PUB ignores it
            },
            Err(error) => {
                tracing::debug!(%error, "subscriber connection closed");
                break;
            }
        };
        let mut subscriptions = reader
            .conn
            .subscriptions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if subscribe {
            subscriptions.push(prefix);
        } else if let Some(index) = subscriptions.iter().position(|p| *p == prefix) {
            subscriptions.swap_remove(index);
        }
    }
    match shared.upgrade() {
        Some(shared) => shared.detach(&reader.conn),
        None => {
            reader.conn.close();
        }
    }
}

/// The receiving side: every connection's reader, polled fair-queued in the caller's task.
#[derive(Debug)]
pub(crate) struct Inbox {
    shared: Arc<Shared>,
    new_readers: mpsc::UnboundedReceiver<Reader>,
    readers: Vec<Reader>,
    /// The reader polled first next time.
    next: usize,
}

impl Inbox {
    /// The next message from any peer; `Err` once for each connection that fails (it is
    /// removed; the socket keeps running).
    ///
    /// # Cancel safety
    /// Cancel-safe: every partly read message stays in its reader.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frames, ConnError>> {
        while let Poll::Ready(Some(reader)) = self.new_readers.poll_recv(cx) {
            self.readers.push(reader);
        }
        let count = self.readers.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            loop {
                match self.readers[index].poll_next(cx) {
                    Poll::Ready(Ok(Incoming::Message(frames))) => {
                        self.next = index + 1;
                        return Poll::Ready(Ok(frames));
                    }
                    // Only a PUB acts on subscriptions, and its peers are read elsewhere.
                    Poll::Ready(Ok(Incoming::Subscription(..))) => continue,
                    Poll::Ready(Err(error)) => {
                        let reader = self.readers.swap_remove(index);
                        self.shared.detach(&reader.conn);
                        return Poll::Ready(Err(error));
                    }
                    Poll::Pending => break,
                }
            }
        }
        Poll::Pending
    }

    /// Waits for the next message (see [`Inbox::poll_recv`]).
    pub(crate) async fn recv(&mut self) -> Result<Frames, ConnError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// A socket before it is split into its halves.
#[derive(Debug)]
pub(crate) struct Socket {
    shared: Arc<Shared>,
    inbox: Inbox,
}

impl Socket {
    pub(crate) fn new(kind: SocketKind, identity: Bytes) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            kind,
            identity,
            peers: Mutex::default(),
            subscriptions: Mutex::default(),
            new_readers: tx,
            events: Mutex::new(None),
            next_id: AtomicU32::new(RandomState::new().hash_one(0u8) as u32),
            cancel: CancellationToken::new(),
            listeners: Mutex::new(Vec::new()),
        });
        let inbox = Inbox {
            shared: Arc::clone(&shared),
            new_readers: rx,
            readers: Vec::new(),
            next: 0,
        };
        Self { shared, inbox }
    }

    /// Starts reporting peer events.
    pub(crate) fn monitor(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .shared
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(tx);
        rx
    }

    /// Binds `host:port` and accepts peers in the background; returns the bound address.
    pub(crate) async fn bind(&mut self, host_port: &str) -> std::io::Result<std::net::SocketAddr> {
        let listener = TcpListener::bind(host_port).await?;
        let local = listener.local_addr()?;
        let listener = listener.into_std()?;
        let handle = socket2::Socket::from(listener.try_clone()?);
        let listener = TcpListener::from_std(listener)?;
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(handle);
        tokio::spawn(accept_loop(
            listener,
            Arc::downgrade(&self.shared),
            self.shared.kind,
            self.shared.identity.clone(),
            self.shared.cancel.clone(),
        ));
        Ok(local)
    }

    /// Adds subscriptions (SUB only) and sends them to the connected peers.
    pub(crate) fn subscribe(&mut self, prefixes: &[Bytes]) {
        if self.shared.kind != SocketKind::Sub || prefixes.is_empty() {
            return;
        }
        self.shared
            .subscriptions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .extend(prefixes.iter().cloned());
        let peers: Vec<Arc<Conn>> = self.shared.peers().list.clone();
        for conn in peers {
            let chunks = prefixes
                .iter()
                .flat_map(|prefix| {
                    codec::encode_message(&[codec::subscription_message(true, prefix)])
                })
                .collect();
            self.shared.write(&conn, chunks);
        }
    }

    /// The halves: the sending side (shared, cheap to clone) and the receiving side.
    pub(crate) fn split(self) -> (Arc<Shared>, Inbox) {
        (self.shared, self.inbox)
    }
}

/// Accepts connections until the socket is dropped; each handshake runs on its own task.
async fn accept_loop(
    listener: TcpListener,
    shared: Weak<Shared>,
    kind: SocketKind,
    identity: Bytes,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let identity = identity.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let handshake = tokio::select! {
                () = cancel.cancelled() => return,
                result = conn::handshake(&stream, kind, &identity, ACCEPT_HANDSHAKE_TIMEOUT) => result,
            };
            match handshake {
                Ok((info, decoder)) => {
                    if let Some(shared) = shared.upgrade() {
                        shared.attach(stream, info, decoder);
                    }
                }
                Err(error) => {
                    tracing::warn!(%peer, %error, "handshake failed; connection dropped");
                }
            }
        });
    }
}
