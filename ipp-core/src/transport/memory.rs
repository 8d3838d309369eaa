//! An in-process [`Transport`]: sockets in one process exchanging messages through channels.
//!
//! It exists so the controller can be tested without a network. Clones of one
//! [`MemoryTransport`] share a registry of bound addresses and see each other's sockets;
//! separate [`MemoryTransport::new`] instances are isolated.
//!
//! Addresses are `inproc://name`, `mem://name` or `tcp://host:port`. A `tcp` address is only a
//! name here (keyed by its port, so `tcp://0.0.0.0:5` and `tcp://127.0.0.1:5` are the same
//! endpoint); binding port 0 hands out a fake port unique within the registry.
//!
//! Delivery is direct: a sending socket's task pushes each message straight into the
//! receiving socket's queue, so a peer's full queue slows only the sockets sending to it.
//! A connecting socket stays registered under its address until it is dropped: whenever a
//! socket binds that address, the two are linked, which is how "reconnect after the peer
//! went away" and "connect before anyone binds" work.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::{Frames, Socket, SocketKind, SocketOptions, SocketTaskEnds, Transport};
use crate::error::{Error, Result};

/// First fake port handed out for `tcp://…:0` binds.
const FIRST_FAKE_PORT: u32 = 40_000;
/// How many distinct unknown peers a ROUTER remembers having warned about.
const MAX_WARNED_PEERS: usize = 1024;

/// In-process transport for tests: ROUTER/DEALER/PUB/SUB over channels.
///
/// Cloning shares the registry of bound addresses; see the [module docs](self).
#[derive(Clone, Default)]
pub struct MemoryTransport {
    registry: Arc<Mutex<Registry>>,
}

impl MemoryTransport {
    /// Creates a transport with its own, empty registry of addresses.
    pub fn new() -> Self {
        Self::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Registers a socket, links it to its peers and starts its task.
    fn open(
        &self,
        kind: SocketKind,
        key: String,
        address: String,
        options: SocketOptions,
        binds: bool,
    ) -> Result<Socket> {
        let (socket, ends) = Socket::new(kind, address.clone(), options.queue_capacity);
        let SocketTaskEnds {
            outgoing,
            incoming,
            stop,
        } = ends;
        let node = {
            let mut registry = self.registry();
            if binds && registry.bound.get(&key).and_then(Weak::upgrade).is_some() {
                return Err(Error::Address {
                    address,
                    reason: "address already in use".into(),
                });
            }
            registry.next_socket += 1;
            let identity = match options.identity.clone() {
                Some(identity) if !identity.is_empty() => identity,
                // Like libzmq: a zero byte and a number, never clashing with chosen names.
                _ => {
                    let mut id = vec![0u8];
                    id.extend_from_slice(&registry.next_socket.to_be_bytes());
                    Bytes::from(id)
                }
            };
            let node = Arc::new(Node {
                id: u64::from(registry.next_socket),
                kind,
                identity,
                subscriptions: options.subscriptions.clone(),
                incoming,
                peers: Mutex::new(Vec::new()),
                linked: Notify::new(),
            });
            registry.live.insert(node.id, Arc::clone(&node));
            if binds {
                registry.bound.insert(key.clone(), Arc::downgrade(&node));
                let waiting: Vec<Arc<Node>> = registry
                    .connecting
                    .get(&key)
                    .map(|list| list.iter().filter_map(Weak::upgrade).collect())
                    .unwrap_or_default();
                for connector in waiting {
                    link(&connector, &node);
                }
            } else {
                registry
                    .connecting
                    .entry(key.clone())
                    .or_default()
                    .push(Arc::downgrade(&node));
                if let Some(bound) = registry.bound.get(&key).and_then(Weak::upgrade) {
                    link(&node, &bound);
                }
            }
            node
        };
        tracing::debug!(socket = %kind, %address, bound = binds, "memory socket opened");
        let registry = Arc::clone(&self.registry);
        tokio::spawn(async move {
            let mut stop = stop;
            tokio::select! {
                // The user dropped every handle of the socket.
                _ = &mut stop => {}
                // Only returns once the user dropped every sender; keep receiving until stop.
                () = send_loop(&node, outgoing) => { let _ = stop.await; }
            }
            close(&registry, &node, &key);
        });
        Ok(socket)
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.registry();
        f.debug_struct("MemoryTransport")
            .field("bound", &registry.bound.len())
            .field("sockets", &registry.live.len())
            .finish()
    }
}

impl fmt::Display for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory")
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn bind(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> Result<Socket> {
        let parsed = parse(address)?;
        let (key, actual) = match parsed {
            Parsed::Named(name) => (name, address.to_owned()),
            Parsed::Tcp { host, port: 0 } => {
                let port = {
                    let mut registry = self.registry();
                    loop {
                        let candidate = registry.next_port;
                        registry.next_port = registry.next_port.wrapping_add(1);
                        let Ok(port) = u16::try_from(candidate) else {
                            registry.next_port = FIRST_FAKE_PORT;
                            continue;
                        };
                        let taken = registry
                            .bound
                            .get(&tcp_key(port))
                            .and_then(Weak::upgrade)
                            .is_some();
                        if !taken {
                            break port;
                        }
                    }
                };
                (tcp_key(port), format!("tcp://{host}:{port}"))
            }
            Parsed::Tcp { port, .. } => (tcp_key(port), address.to_owned()),
        };
        self.open(kind, key, actual, options, true)
    }

    async fn connect(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> Result<Socket> {
        let key = match parse(address)? {
            Parsed::Named(name) => name,
            Parsed::Tcp { port: 0, .. } => {
                return Err(Error::Address {
                    address: address.to_owned(),
                    reason: "cannot connect to port 0".into(),
                })
            }
            Parsed::Tcp { port, .. } => tcp_key(port),
        };
        self.open(kind, key, address.to_owned(), options, false)
    }
}

/// The shared state of one transport and its clones.
#[derive(Debug)]
struct Registry {
    /// Address key → the socket bound there (if it is still alive).
    bound: HashMap<String, Weak<Node>>,
    /// Address key → sockets connected to it, linked whenever someone binds it.
    connecting: HashMap<String, Vec<Weak<Node>>>,
    /// Every open socket; the only strong references, so links never keep a socket alive.
    live: HashMap<u64, Arc<Node>>,
    next_socket: u32,
    next_port: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            bound: HashMap::new(),
            connecting: HashMap::new(),
            live: HashMap::new(),
            next_socket: 0,
            next_port: FIRST_FAKE_PORT,
        }
    }
}

/// One open socket as its peers see it.
#[derive(Debug)]
struct Node {
    id: u64,
    kind: SocketKind,
    /// The routing identity this socket announces.
    identity: Bytes,
    subscriptions: Vec<Bytes>,
    /// The user's receive queue: peers deliver straight into it.
    incoming: mpsc::Sender<Frames>,
    /// The sockets this one is linked to.
    peers: Mutex<Vec<Link>>,
    /// Woken when a link is added (a DEALER waits on it while it has no peer).
    linked: Notify,
}

impl Node {
    fn peers(&self) -> MutexGuard<'_, Vec<Link>> {
        lock(&self.peers)
    }
}

#[derive(Clone, Debug)]
struct Link {
    /// The peer's identity (what a ROUTER puts in frame 0).
    identity: Bytes,
    node: Weak<Node>,
    node_id: u64,
}

impl Link {
    fn to(node: &Arc<Node>) -> Self {
        Self {
            identity: node.identity.clone(),
            node: Arc::downgrade(node),
            node_id: node.id,
        }
    }
}

/// Locks a std mutex; a poisoned lock still holds consistent data here (every critical
/// section is a few container operations), so take it rather than panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn compatible(a: SocketKind, b: SocketKind) -> bool {
    use SocketKind::{Dealer, Pub, Router, Sub};
    matches!(
        (a, b),
        (Router | Dealer, Router | Dealer) | (Pub, Sub) | (Sub, Pub)
    )
}

/// Links a connecting socket with a bound one, both ways.
fn link(connector: &Arc<Node>, bound: &Arc<Node>) {
    if !compatible(connector.kind, bound.kind) {
        tracing::warn!(
            connector = %connector.kind,
            bound = %bound.kind,
            "memory sockets of incompatible kinds not linked"
        );
        return;
    }
    for (here, there) in [(connector, bound), (bound, connector)] {
        let mut peers = here.peers();
        // A peer announcing an identity already linked takes its place (ZeroMQ's handover).
        if here.kind == SocketKind::Router {
            peers.retain(|peer| peer.identity != there.identity);
        }
        peers.push(Link::to(there));
        drop(peers);
        here.linked.notify_one();
    }
}

/// Unregisters a socket and unlinks it from every peer.
fn close(registry: &Mutex<Registry>, node: &Arc<Node>, key: &str) {
    let mut registry = lock(registry);
    registry.live.remove(&node.id);
    if let Some(bound) = registry.bound.get(key) {
        if bound.upgrade().is_none_or(|bound| bound.id == node.id) {
            registry.bound.remove(key);
        }
    }
    if let Some(list) = registry.connecting.get_mut(key) {
        list.retain(|weak| weak.upgrade().is_some_and(|other| other.id != node.id));
        if list.is_empty() {
            registry.connecting.remove(key);
        }
    }
    drop(registry);
    let peers = std::mem::take(&mut *node.peers());
    for peer in peers {
        if let Some(other) = peer.node.upgrade() {
            other.peers().retain(|link| link.node_id != node.id);
        }
    }
    tracing::debug!(socket = %node.kind, "memory socket closed");
}

/// Drains the user's send queue into peers until the user drops every sender.
async fn send_loop(node: &Arc<Node>, mut outgoing: mpsc::Receiver<Frames>) {
    let mut warned: HashSet<Bytes> = HashSet::new();
    let mut next_peer = 0usize;
    while let Some(frames) = outgoing.recv().await {
        match node.kind {
            SocketKind::Router => route(node, frames, &mut warned).await,
            SocketKind::Dealer => {
                let mut frames = frames;
                loop {
                    let (peer, identity) = wait_for_peer(node, &mut next_peer).await;
                    match deliver(node, &peer, frames).await {
                        Ok(()) => break,
                        Err(back) => {
                            // The peer is closing: forget it and try the next one (or wait).
                            tracing::trace!(peer = ?identity, "memory dealer peer gone");
                            node.peers().retain(|link| link.node_id != peer.id);
                            frames = back;
                        }
                    }
                }
            }
            SocketKind::Pub => publish(node, &frames),
            // `SocketSender` refuses sends on a SUB before they reach this queue.
            SocketKind::Sub => {}
        }
    }
}

/// Waits (while the user's queue fills behind the held message) until a peer is linked,
/// and picks the next one round-robin.
async fn wait_for_peer(node: &Arc<Node>, next_peer: &mut usize) -> (Arc<Node>, Bytes) {
    loop {
        // Register interest before looking, so a link added in between still wakes us.
        let notified = node.linked.notified();
        let found = {
            let peers = node.peers();
            if peers.is_empty() {
                None
            } else {
                *next_peer = next_peer.wrapping_add(1);
                let link = &peers[*next_peer % peers.len()];
                link.node
                    .upgrade()
                    .map(|peer| (peer, link.identity.clone()))
            }
        };
        match found {
            Some(found) => return found,
            None => notified.await,
        }
    }
}

/// Sends `[peer_id, frames…]` from a ROUTER to the peer it names, or drops it.
async fn route(node: &Arc<Node>, mut frames: Frames, warned: &mut HashSet<Bytes>) {
    if frames.is_empty() {
        tracing::warn!("dropped a ROUTER message without a peer id frame");
        return;
    }
    let peer_id = frames.remove(0);
    let peer = node
        .peers()
        .iter()
        .find(|link| link.identity == peer_id)
        .and_then(|link| link.node.upgrade());
    match peer {
        Some(peer) => {
            if deliver(node, &peer, frames).await.is_err() {
                warn_unknown(warned, peer_id);
            }
        }
        None => warn_unknown(warned, peer_id),
    }
}

fn warn_unknown(warned: &mut HashSet<Bytes>, peer_id: Bytes) {
    if warned.len() >= MAX_WARNED_PEERS {
        warned.clear();
    }
    if warned.insert(peer_id.clone()) {
        tracing::warn!(peer = ?peer_id, "dropped messages to an unknown peer");
    }
}

/// Pushes one message into a peer's receive queue; gives the frames back if the peer has gone.
async fn deliver(from: &Node, to: &Node, mut frames: Frames) -> Result<(), Frames> {
    let routed = to.kind == SocketKind::Router;
    if routed {
        frames.insert(0, from.identity.clone());
    }
    to.incoming.send(frames).await.map_err(|returned| {
        let mut frames = returned.0;
        if routed {
            frames.remove(0);
        }
        frames
    })
}

/// Fans a message out to matching subscribers; a subscriber whose queue is full misses it,
/// as with a ZeroMQ PUB at its high-water mark.
fn publish(node: &Node, frames: &Frames) {
    let topic = frames.first().cloned().unwrap_or_default();
    let peers: Vec<Arc<Node>> = node
        .peers()
        .iter()
        .filter_map(|link| link.node.upgrade())
        .collect();
    for peer in peers {
        let wanted = peer
            .subscriptions
            .iter()
            .any(|prefix| topic.starts_with(prefix));
        if wanted && peer.incoming.try_send(frames.clone()).is_err() {
            tracing::debug!("memory subscriber queue full or closed; message dropped");
        }
    }
}

enum Parsed {
    Named(String),
    Tcp { host: String, port: u16 },
}

fn tcp_key(port: u16) -> String {
    format!("tcp:{port}")
}

fn parse(address: &str) -> Result<Parsed> {
    let bad = |reason: &str| Error::Address {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = address
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://…"))?;
    match scheme {
        "inproc" | "mem" if !rest.is_empty() => Ok(Parsed::Named(format!("{scheme}:{rest}"))),
        "inproc" | "mem" => Err(bad("empty name")),
        "tcp" => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp://host:port"))?;
            let port = port.parse().map_err(|_| bad("bad port"))?;
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            Ok(Parsed::Tcp {
                host: host.to_owned(),
                port,
            })
        }
        _ => Err(bad(
            "the memory transport takes inproc://, mem:// or tcp://",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::transport as suite;

    macro_rules! conformance {
        ($($check:ident),* $(,)?) => {
            mod inproc {
                use super::*;
                $(
                    #[tokio::test]
                    async fn $check() {
                        suite::$check(&MemoryTransport::new(), "inproc://suite").await;
                    }
                )*
            }
            mod tcp {
                use super::*;
                $(
                    #[tokio::test]
                    async fn $check() {
                        suite::$check(&MemoryTransport::new(), "tcp://127.0.0.1:0").await;
                    }
                )*
            }
        };
    }

    conformance!(
        bind_port_zero_reports_real_port,
        router_dealer_round_trip_with_identity,
        router_sees_distinct_ids_for_anonymous_dealers,
        multipart_frames_arrive_unchanged,
        pub_sub_filters_by_topic_prefix,
        sub_bound_receives_from_connected_pub,
        sub_cannot_send,
        router_send_to_unknown_peer_is_dropped,
        dealer_connects_before_router_binds,
        dealer_reconnects_after_router_rebinds,
        router_connects_to_router_with_identity,
        many_messages_arrive_in_order,
        dropping_a_socket_closes_it,
    );

    #[tokio::test]
    async fn separate_transports_are_isolated() {
        let one = MemoryTransport::new();
        let two = MemoryTransport::new();
        let _router = one
            .bind(SocketKind::Router, "inproc://x", SocketOptions::default())
            .await
            .unwrap();
        // The same name is free in another registry, but taken in a clone of the first.
        let _other = two
            .bind(SocketKind::Router, "inproc://x", SocketOptions::default())
            .await
            .unwrap();
        let clone = one.clone();
        let err = clone
            .bind(SocketKind::Router, "inproc://x", SocketOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Address { .. }), "{err}");
    }

    #[tokio::test]
    async fn bad_addresses_are_refused() {
        let transport = MemoryTransport::new();
        for address in ["nope", "udp://x", "tcp://host", "inproc://", "tcp://:5"] {
            let err = transport
                .bind(SocketKind::Dealer, address, SocketOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Address { .. }), "{address}: {err}");
        }
        let err = transport
            .connect(
                SocketKind::Dealer,
                "tcp://127.0.0.1:0",
                SocketOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Address { .. }), "{err}");
    }
}
