//! The Transport conformance suite.
//!
//! Every [`Transport`] implementation runs each check against itself, e.g.
//!
//! ```ignore
//! #[tokio::test]
//! async fn router_dealer_round_trip_with_identity() {
//!     ipp_core::testing::transport::router_dealer_round_trip_with_identity(
//!         &MyTransport::new(),
//!         "tcp://127.0.0.1:0",
//!     )
//!     .await;
//! }
//! ```
//!
//! Each check takes the transport and a base address to bind: `tcp://127.0.0.1:0` (every
//! bind gets its own port) or a named address such as `inproc://x` (each check appends a
//! random suffix, so checks may share a transport). Checks panic with a message saying what
//! broke. Nothing is timed: [`GUARD`] only turns a hang into a failure. Where delivery starts
//! asynchronously (a ZeroMQ ROUTER cannot route to a peer before its handshake completes, a
//! PUB drops messages for subscribers it does not know yet), the check repeats a *probe*
//! message until one arrives and skips leftover probes afterwards.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::transport::{Frames, Socket, SocketKind, SocketOptions, Transport};

/// How long any single step may take before the check fails instead of hanging.
pub const GUARD: Duration = Duration::from_secs(20);

/// Interval between probe messages while waiting for delivery to start.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// The last frame of every probe message.
const PROBE: &[u8] = b"__ipp_probe__";

/// Binding port 0 reports the port actually bound, and two binds get different ports.
pub async fn bind_port_zero_reports_real_port(transport: &dyn Transport, base: &str) {
    let Some(prefix) = base
        .strip_suffix(":0")
        .filter(|_| base.starts_with("tcp://"))
    else {
        // Named addresses have no port; the address must come back unchanged.
        let address = fresh_address(base, "bind").await;
        let socket = bind(transport, SocketKind::Router, &address, options()).await;
        assert_eq!(
            socket.address(),
            address,
            "{transport}: bound address reported differently"
        );
        return;
    };
    let one = bind(transport, SocketKind::Router, base, options()).await;
    let two = bind(transport, SocketKind::Pub, base, options()).await;
    for socket in [&one, &two] {
        let port = socket
            .port()
            .unwrap_or_else(|| panic!("{transport}: no port in {}", socket.address()));
        assert_ne!(port, 0, "{transport}: bind to {base} reported port 0");
        assert_eq!(
            socket.address(),
            format!("{prefix}:{port}"),
            "{transport}: bound address does not keep the host"
        );
    }
    assert_ne!(
        one.port(),
        two.port(),
        "{transport}: two binds to port 0 reported the same port"
    );
}

/// A DEALER with an identity reaches a bound ROUTER, which sees that identity as frame 0,
/// and the ROUTER's reply addressed to it arrives.
pub async fn router_dealer_round_trip_with_identity(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "round-trip").await;
    let mut router = bind(transport, SocketKind::Router, &address, options()).await;
    let mut dealer = connect(
        transport,
        SocketKind::Dealer,
        router.address(),
        options().with_identity("dealer-1"),
    )
    .await;

    send(&dealer, vec![b("hello")]).await;
    let got = recv(&mut router, "the dealer's request at the router").await;
    assert_eq!(
        got,
        vec![b("dealer-1"), b("hello")],
        "{transport}: router did not see [identity, payload]"
    );

    send(&router, vec![b("dealer-1"), b("world"), b("!")]).await;
    let got = recv(&mut dealer, "the router's reply at the dealer").await;
    assert_eq!(
        got,
        vec![b("world"), b("!")],
        "{transport}: reply did not reach the dealer unchanged"
    );
}

/// Dealers without an identity get distinct, non-empty ids at the ROUTER, and replies to
/// each id reach the right dealer.
pub async fn router_sees_distinct_ids_for_anonymous_dealers(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "anonymous").await;
    let mut router = bind(transport, SocketKind::Router, &address, options()).await;
    let mut first = connect(transport, SocketKind::Dealer, router.address(), options()).await;
    let mut second = connect(transport, SocketKind::Dealer, router.address(), options()).await;

    send(&first, vec![b("first")]).await;
    send(&second, vec![b("second")]).await;
    let mut ids = HashMap::new();
    for _ in 0..2 {
        let got = recv(&mut router, "an anonymous dealer's message").await;
        assert_eq!(
            got.len(),
            2,
            "{transport}: expected [id, payload], got {got:?}"
        );
        assert!(
            !got[0].is_empty(),
            "{transport}: anonymous dealer got an empty id"
        );
        ids.insert(got[1].clone(), got[0].clone());
    }
    let (Some(first_id), Some(second_id)) = (ids.get(&b("first")), ids.get(&b("second"))) else {
        panic!("{transport}: router did not receive one message from each dealer: {ids:?}");
    };
    assert_ne!(
        first_id, second_id,
        "{transport}: two anonymous dealers share a routing id"
    );

    send(&router, vec![second_id.clone(), b("to-second")]).await;
    send(&router, vec![first_id.clone(), b("to-first")]).await;
    assert_eq!(
        recv(&mut first, "the reply to the first dealer").await,
        vec![b("to-first")]
    );
    assert_eq!(
        recv(&mut second, "the reply to the second dealer").await,
        vec![b("to-second")]
    );
}

/// Frame boundaries and bytes survive both directions: empty frames, a lone empty frame,
/// binary data and a 10 MB frame.
pub async fn multipart_frames_arrive_unchanged(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "multipart").await;
    let mut router = bind(transport, SocketKind::Router, &address, options()).await;
    let mut dealer = connect(
        transport,
        SocketKind::Dealer,
        router.address(),
        options().with_identity("frames"),
    )
    .await;

    let big: Bytes = (0..10 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let messages: Vec<Frames> = vec![
        vec![Bytes::new()],
        vec![b(""), b("a"), b(""), b(""), b("z")],
        vec![Bytes::from_static(&[0, 255, 1, 254, 0]), b("<IDS|MSG>")],
        vec![b("head"), big.clone(), b("")],
    ];
    for message in &messages {
        send(&dealer, message.clone()).await;
    }
    for message in &messages {
        let got = recv(&mut router, "a multipart message at the router").await;
        assert_eq!(got[0], b("frames"), "{transport}: wrong peer id");
        assert_frames_eq(transport, &got[1..], message, "dealer to router");
    }
    for message in &messages {
        let mut routed = vec![b("frames")];
        routed.extend(message.iter().cloned());
        send(&router, routed).await;
    }
    for message in &messages {
        let got = recv(&mut dealer, "a multipart message at the dealer").await;
        assert_frames_eq(transport, &got, message, "router to dealer");
    }
}

/// A bound PUB delivers to connected SUBs by topic prefix on the first frame; an empty
/// subscription receives everything, in the order published.
pub async fn pub_sub_filters_by_topic_prefix(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "pubsub").await;
    let publisher = bind(transport, SocketKind::Pub, &address, options()).await;
    let mut news = connect(
        transport,
        SocketKind::Sub,
        publisher.address(),
        options().with_subscription("news."),
    )
    .await;
    let mut all = connect(
        transport,
        SocketKind::Sub,
        publisher.address(),
        options().with_subscription(""),
    )
    .await;

    let probe = vec![b("news.probe"), Bytes::from_static(PROBE)];
    probe_until_received(&publisher, &probe, &mut news, "the news subscriber").await;
    probe_until_received(&publisher, &probe, &mut all, "the catch-all subscriber").await;

    send(&publisher, vec![b("weather.today"), b("rain")]).await;
    send(&publisher, vec![b("news.today"), b("sun")]).await;
    send(&publisher, vec![b("news"), b("no dot: not news.")]).await;
    send(&publisher, vec![b("news.end"), b("")]).await;

    // The end marker is published last: once it arrives, nothing filtered out can follow.
    let got = recv_skipping_probes(&mut news, "news at the news subscriber").await;
    assert_eq!(
        got,
        vec![b("news.today"), b("sun")],
        "{transport}: prefix filter let through the wrong message"
    );
    let got = recv_skipping_probes(&mut news, "the end marker at the news subscriber").await;
    assert_eq!(
        got,
        vec![b("news.end"), b("")],
        "{transport}: prefix filter let through the wrong message"
    );

    for expected in [
        vec![b("weather.today"), b("rain")],
        vec![b("news.today"), b("sun")],
        vec![b("news"), b("no dot: not news.")],
        vec![b("news.end"), b("")],
    ] {
        let got = recv_skipping_probes(&mut all, "a message at the catch-all subscriber").await;
        assert_eq!(
            got, expected,
            "{transport}: empty subscription missed or reordered a message"
        );
    }
}

/// A bound SUB receives from a PUB that connects to it (ipyparallel's iopub and
/// notification sockets are wired this way).
pub async fn sub_bound_receives_from_connected_pub(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "sub-bound").await;
    let mut subscriber = bind(
        transport,
        SocketKind::Sub,
        &address,
        options().with_subscription("engine."),
    )
    .await;
    let publisher = connect(transport, SocketKind::Pub, subscriber.address(), options()).await;

    let probe = vec![b("engine.probe"), Bytes::from_static(PROBE)];
    probe_until_received(&publisher, &probe, &mut subscriber, "the bound subscriber").await;
    send(&publisher, vec![b("other.x"), b("filtered")]).await;
    send(&publisher, vec![b("engine.0.stdout"), b("hi")]).await;
    let got = recv_skipping_probes(&mut subscriber, "a message at the bound subscriber").await;
    assert_eq!(
        got,
        vec![b("engine.0.stdout"), b("hi")],
        "{transport}: bound SUB got the wrong message"
    );
}

/// Sending on a SUB fails with [`Error::Unsupported`].
pub async fn sub_cannot_send(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "sub-send").await;
    let subscriber = bind(
        transport,
        SocketKind::Sub,
        &address,
        options().with_subscription(""),
    )
    .await;
    match subscriber.send(vec![b("x")]).await {
        Err(Error::Unsupported { .. }) => {}
        other => panic!("{transport}: send on a SUB returned {other:?}, expected Unsupported"),
    }
}

/// A ROUTER send to a peer it does not know succeeds (the message is dropped) and the
/// socket keeps working.
pub async fn router_send_to_unknown_peer_is_dropped(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "unknown-peer").await;
    let mut router = bind(transport, SocketKind::Router, &address, options()).await;
    for i in 0..3 {
        if let Err(err) = router
            .send(vec![b("nobody"), b("lost"), Bytes::from(vec![i])])
            .await
        {
            panic!("{transport}: send to an unknown peer failed: {err}");
        }
    }
    let mut dealer = connect(
        transport,
        SocketKind::Dealer,
        router.address(),
        options().with_identity("known"),
    )
    .await;
    send(&dealer, vec![b("ping")]).await;
    assert_eq!(
        recv(&mut router, "a message after the unknown-peer sends").await,
        vec![b("known"), b("ping")]
    );
    send(&router, vec![b("nobody"), b("lost again")]).await;
    send(&router, vec![b("known"), b("pong")]).await;
    assert_eq!(
        recv(&mut dealer, "the reply after the unknown-peer sends").await,
        vec![b("pong")],
        "{transport}: router stopped working after sending to an unknown peer"
    );
}

/// A DEALER that connects before anyone binds the address delivers what it queued
/// meanwhile once a ROUTER binds.
pub async fn dealer_connects_before_router_binds(transport: &dyn Transport, base: &str) {
    let address = concrete_address(base, "late-bind").await;
    let mut dealer = connect(
        transport,
        SocketKind::Dealer,
        &address,
        options().with_identity("early"),
    )
    .await;
    send(&dealer, vec![b("queued before bind")]).await;

    let mut router = bind(transport, SocketKind::Router, &address, options()).await;
    assert_eq!(
        recv(&mut router, "the message queued before the bind").await,
        vec![b("early"), b("queued before bind")],
        "{transport}: message queued before the bind did not arrive"
    );
    send(&router, vec![b("early"), b("welcome")]).await;
    assert_eq!(
        recv(&mut dealer, "the reply after the late bind").await,
        vec![b("welcome")]
    );
}

/// After the ROUTER is dropped and a new one binds the same address (same port), the DEALER
/// reconnects by itself and messages flow both ways again.
pub async fn dealer_reconnects_after_router_rebinds(transport: &dyn Transport, base: &str) {
    let address = concrete_address(base, "rebind").await;
    let mut router = bind(transport, SocketKind::Router, &address, options()).await;
    let mut dealer = connect(
        transport,
        SocketKind::Dealer,
        &address,
        options().with_identity("phoenix"),
    )
    .await;
    send(&dealer, vec![b("first life")]).await;
    assert_eq!(
        recv(&mut router, "the message to the first router").await,
        vec![b("phoenix"), b("first life")]
    );
    drop(router);

    // Closing is asynchronous: the old socket may hold the address for a moment.
    let mut router = guard("rebinding the address of a dropped router", async {
        loop {
            match transport
                .bind(SocketKind::Router, &address, options())
                .await
            {
                Ok(socket) => break socket,
                Err(_) => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    })
    .await;
    let probe = vec![Bytes::from_static(PROBE)];
    let got = probe_until_received(&dealer, &probe, &mut router, "the rebound router").await;
    assert_eq!(
        got[0],
        b("phoenix"),
        "{transport}: reconnected dealer lost its identity"
    );

    send(&router, vec![b("phoenix"), b("second life")]).await;
    assert_eq!(
        recv(&mut dealer, "the new router's reply").await,
        vec![b("second life")]
    );
    send(&dealer, vec![b("thanks")]).await;
    assert_eq!(
        recv_skipping_probes(&mut router, "the dealer's message to the new router").await,
        vec![b("phoenix"), b("thanks")]
    );
}

/// A ROUTER with an identity connects to a bound ROUTER (as ipyparallel engines do) and
/// both can address each other.
pub async fn router_connects_to_router_with_identity(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "router-router").await;
    let mut hub = bind(transport, SocketKind::Router, &address, options()).await;
    let mut engine = connect(
        transport,
        SocketKind::Router,
        hub.address(),
        options().with_identity("engine-0"),
    )
    .await;

    // The hub cannot route to the engine before the handshake: probe until it can.
    let probe = vec![b("engine-0"), Bytes::from_static(PROBE)];
    let got = probe_until_received(&hub, &probe, &mut engine, "the connecting router").await;
    assert_eq!(
        got.len(),
        2,
        "{transport}: expected [hub id, probe], got {got:?}"
    );
    let hub_id = got[0].clone();
    assert!(
        !hub_id.is_empty(),
        "{transport}: the bound router's id is empty"
    );

    send(&engine, vec![hub_id.clone(), b("registration")]).await;
    assert_eq!(
        recv(&mut hub, "the engine's message at the hub").await,
        vec![b("engine-0"), b("registration")],
        "{transport}: bound router did not see the connecting router's identity"
    );
    send(&hub, vec![b("engine-0"), b("task")]).await;
    assert_eq!(
        recv_skipping_probes(&mut engine, "the hub's message at the engine").await,
        vec![hub_id, b("task")]
    );
}

/// Ten thousand messages each way arrive complete and in order, with both directions in
/// flight at once.
pub async fn many_messages_arrive_in_order(transport: &dyn Transport, base: &str) {
    const COUNT: u32 = 10_000;
    let address = fresh_address(base, "many").await;
    let router = bind(transport, SocketKind::Router, &address, options()).await;
    let dealer = connect(
        transport,
        SocketKind::Dealer,
        router.address(),
        options().with_identity("bulk"),
    )
    .await;
    let (router_tx, mut router_rx) = router.split();
    let (dealer_tx, mut dealer_rx) = dealer.split();

    let dealer_sends = async {
        for i in 0..COUNT {
            if let Err(err) = dealer_tx
                .send(vec![b("seq"), Bytes::from(i.to_be_bytes().to_vec())])
                .await
            {
                panic!("{transport}: dealer send {i} failed: {err}");
            }
        }
    };
    // The router echoes each message back as it arrives.
    let router_echoes = async {
        for i in 0..COUNT {
            let got = guard("a message in the stream at the router", router_rx.recv())
                .await
                .unwrap_or_else(|err| panic!("{transport}: router recv failed: {err}"));
            assert_eq!(
                got,
                vec![b("bulk"), b("seq"), Bytes::from(i.to_be_bytes().to_vec())],
                "{transport}: message {i} out of order at the router"
            );
            if let Err(err) = router_tx.send(got).await {
                panic!("{transport}: router send {i} failed: {err}");
            }
        }
    };
    let dealer_receives = async {
        for i in 0..COUNT {
            let got = guard("a message in the stream at the dealer", dealer_rx.recv())
                .await
                .unwrap_or_else(|err| panic!("{transport}: dealer recv failed: {err}"));
            assert_eq!(
                got,
                vec![b("seq"), Bytes::from(i.to_be_bytes().to_vec())],
                "{transport}: message {i} out of order at the dealer"
            );
        }
    };
    tokio::join!(dealer_sends, router_echoes, dealer_receives);
}

/// Dropping a socket closes it without harming its peers: a ROUTER keeps serving other
/// dealers, and a socket whose sender alone was dropped still receives.
pub async fn dropping_a_socket_closes_it(transport: &dyn Transport, base: &str) {
    let address = fresh_address(base, "drop").await;
    let mut router = bind(transport, SocketKind::Router, &address, options()).await;

    let mut doomed = connect(
        transport,
        SocketKind::Dealer,
        router.address(),
        options().with_identity("doomed"),
    )
    .await;
    send(&doomed, vec![b("hi")]).await;
    assert_eq!(
        recv(&mut router, "the first dealer's message").await,
        vec![b("doomed"), b("hi")]
    );
    send(&router, vec![b("doomed"), b("bye")]).await;
    assert_eq!(
        recv(&mut doomed, "the reply before dropping").await,
        vec![b("bye")]
    );
    drop(doomed);
    // Whether or not the router noticed yet, sending to the dropped peer must not fail.
    send(&router, vec![b("doomed"), b("into the void")]).await;

    let survivor = connect(
        transport,
        SocketKind::Dealer,
        router.address(),
        options().with_identity("survivor"),
    )
    .await;
    let (survivor_tx, mut survivor_rx) = survivor.split();
    send_on(&survivor_tx, vec![b("still there?")]).await;
    assert_eq!(
        recv(&mut router, "a message from a new dealer after a drop").await,
        vec![b("survivor"), b("still there?")]
    );
    // Dropping only the sending half leaves the socket open for receiving.
    drop(survivor_tx);
    send(&router, vec![b("survivor"), b("yes")]).await;
    assert_eq!(
        guard(
            "a reply to a socket whose sender was dropped",
            survivor_rx.recv()
        )
        .await
        .unwrap_or_else(|err| panic!("{transport}: receiver closed with its sender: {err}")),
        vec![b("yes")]
    );
    drop(survivor_rx);
    send(&router, vec![b("survivor"), b("gone")]).await;
}

// ----- helpers -----

fn options() -> SocketOptions {
    SocketOptions::default()
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Fails the check if `future` takes longer than [`GUARD`].
async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {GUARD:?} waiting for {what}"),
    }
}

/// A distinct address to bind: the base itself for `tcp://…:0`, else the base plus a
/// random suffix.
async fn fresh_address(base: &str, tag: &str) -> String {
    if base.starts_with("tcp://") {
        return base.to_owned();
    }
    format!("{base}-{tag}-{:016x}", rand::random::<u64>())
}

/// An address that can be connected to before it is bound: for `tcp://host:0`, a port
/// the OS just handed out (and that we released).
async fn concrete_address(base: &str, tag: &str) -> String {
    match base
        .strip_prefix("tcp://")
        .and_then(|rest| rest.strip_suffix(":0"))
    {
        Some(host) => {
            let listener = tokio::net::TcpListener::bind((host, 0))
                .await
                .unwrap_or_else(|err| panic!("cannot reserve a port on {host}: {err}"));
            let port = listener
                .local_addr()
                .unwrap_or_else(|err| panic!("no local address for a reserved port: {err}"))
                .port();
            format!("tcp://{host}:{port}")
        }
        None => fresh_address(base, tag).await,
    }
}

async fn bind(
    transport: &dyn Transport,
    kind: SocketKind,
    address: &str,
    options: SocketOptions,
) -> Socket {
    guard("bind", transport.bind(kind, address, options))
        .await
        .unwrap_or_else(|err| panic!("{transport}: bind {kind} to {address} failed: {err}"))
}

async fn connect(
    transport: &dyn Transport,
    kind: SocketKind,
    address: &str,
    options: SocketOptions,
) -> Socket {
    guard("connect", transport.connect(kind, address, options))
        .await
        .unwrap_or_else(|err| panic!("{transport}: connect {kind} to {address} failed: {err}"))
}

async fn send(socket: &Socket, frames: Frames) {
    guard("room in a send queue", socket.send(frames))
        .await
        .unwrap_or_else(|err| {
            panic!(
                "send on {} {} failed: {err}",
                socket.kind(),
                socket.address()
            )
        });
}

async fn send_on(sender: &crate::transport::SocketSender, frames: Frames) {
    guard("room in a send queue", sender.send(frames))
        .await
        .unwrap_or_else(|err| panic!("send failed: {err}"));
}

async fn recv(socket: &mut Socket, what: &str) -> Frames {
    let label = format!("{} {}", socket.kind(), socket.address());
    guard(what, socket.recv())
        .await
        .unwrap_or_else(|err| panic!("recv on {label} failed while waiting for {what}: {err}"))
}

fn is_probe(frames: &Frames) -> bool {
    frames.last().is_some_and(|last| last.as_ref() == PROBE)
}

/// Receives the next message that is not a probe.
async fn recv_skipping_probes(socket: &mut Socket, what: &str) -> Frames {
    loop {
        let frames = recv(socket, what).await;
        if !is_probe(&frames) {
            return frames;
        }
    }
}

/// Sends `probe` from `sender` every [`PROBE_INTERVAL`] until `receiver` gets one; returns
/// the probe as received.
async fn probe_until_received(
    sender: &Socket,
    probe: &Frames,
    receiver: &mut Socket,
    who: &str,
) -> Frames {
    let what = format!("a probe to reach {who}");
    guard(&what, async {
        loop {
            sender
                .send(probe.clone())
                .await
                .unwrap_or_else(|err| panic!("sending a probe to {who} failed: {err}"));
            // Cancel-safe: a message is either returned or left queued.
            if let Ok(result) = tokio::time::timeout(PROBE_INTERVAL, receiver.recv()).await {
                let frames =
                    result.unwrap_or_else(|err| panic!("{who} closed while probing: {err}"));
                if is_probe(&frames) {
                    return frames;
                }
                panic!("{who} received {frames:?} while only probes were sent");
            }
        }
    })
    .await
}

fn assert_frames_eq(transport: &dyn Transport, got: &[Bytes], expected: &[Bytes], direction: &str) {
    let summary = |frames: &[Bytes]| frames.iter().map(Bytes::len).collect::<Vec<_>>();
    assert_eq!(
        got.len(),
        expected.len(),
        "{transport}: {direction}: frame count changed (lengths {:?} vs {:?})",
        summary(got),
        summary(expected)
    );
    for (i, (got, expected)) in got.iter().zip(expected).enumerate() {
        assert!(
            got == expected,
            "{transport}: {direction}: frame {i} changed ({} bytes, expected {})",
            got.len(),
            expected.len()
        );
    }
}
