//! Our ZMTP sockets against a hand-written peer on a raw TCP stream: malformed input drops
//! the connection and nothing else, PING is answered, ZMTP 3.1 SUBSCRIBE works, and large
//! frames arrive intact; and, between our own sockets, a batch published at once reaches
//! each subscriber whole, in order, filtered by topic.

use std::time::Duration;

use bytes::Bytes;
use ipp_core::transport::{Socket, SocketKind, SocketOptions, Transport};
use ipp_transport_zmq::ZmqTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(20);

async fn guard<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {GUARD:?} waiting for {what}"))
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn bind(kind: SocketKind) -> Socket {
    ZmqTransport::new()
        .bind(kind, "tcp://127.0.0.1:0", SocketOptions::default())
        .await
        .expect("bind on 127.0.0.1")
}

fn host_port(socket: &Socket) -> String {
    socket.address().trim_start_matches("tcp://").to_owned()
}

fn greeting() -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[0] = 0xFF;
    out[9] = 0x7F;
    out[10] = 3;
    out[11] = 1;
    out[12..16].copy_from_slice(b"NULL");
    out
}

fn command(name: &str, data: &[u8]) -> Vec<u8> {
    let body = 1 + name.len() + data.len();
    assert!(body < 256, "short commands only in this test");
    let mut out = vec![0x04, body as u8, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    out
}

fn ready(socket_type: &str, identity: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for (name, value) in [
        ("Socket-Type", socket_type.as_bytes()),
        ("Identity", identity),
    ] {
        data.push(name.len() as u8);
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(value.len() as u32).to_be_bytes());
        data.extend_from_slice(value);
    }
    command("READY", &data)
}

/// One frame as it goes on the wire.
fn frame(body: &[u8], more: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let more = u8::from(more);
    if body.len() > 255 {
        out.push(more | 0x02);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(more);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
    out
}

/// Reads one frame: (flags, body).
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let flags = stream.read_u8().await.expect("a frame's flags");
    let size = if flags & 0x02 != 0 {
        stream.read_u64().await.expect("a long size") as usize
    } else {
        usize::from(stream.read_u8().await.expect("a short size"))
    };
    let mut body = vec![0; size];
    stream.read_exact(&mut body).await.expect("a frame's body");
    (flags, body)
}

/// A raw peer that has done the NULL handshake as `socket_type` with `identity`.
async fn handshaken(address: &str, socket_type: &str, identity: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(&greeting()).await.expect("on loopback");
    let mut theirs = [0u8; 64];
    guard("the greeting", stream.read_exact(&mut theirs))
        .await
        .expect("the socket's greeting");
    assert_eq!(theirs[0], 0xFF);
    assert_eq!(&theirs[10..16], &[3, 1, b'N', b'U', b'L', b'L']);
    stream
        .write_all(&ready(socket_type, identity))
        .await
        .expect("on loopback");
    let (flags, body) = guard("READY", read_frame(&mut stream)).await;
    assert_eq!(flags, 0x04, "expected a command");
    assert_eq!(&body[..6], b"\x05READY");
    stream
}

/// Whether the socket closed `stream` (EOF or reset) within the guard time.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    guard("the connection to be dropped", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
}

/// After a bad peer, a well-behaved DEALER still gets through.
async fn router_still_works(router: &mut Socket) {
    let dealer = ZmqTransport::new()
        .connect(
            SocketKind::Dealer,
            router.address(),
            SocketOptions::default().with_identity("good"),
        )
        .await
        .expect("on loopback");
    dealer.send(vec![b("still up")]).await.expect("on loopback");
    assert_eq!(
        guard("the good dealer's message", router.recv())
            .await
            .expect("on loopback"),
        vec![b("good"), b("still up")]
    );
}

#[tokio::test]
async fn a_peer_that_is_not_zmtp_is_dropped_and_the_socket_keeps_running() {
    let mut router = bind(SocketKind::Router).await;
    let mut stream = TcpStream::connect(host_port(&router))
        .await
        .expect("on loopback");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789012345678901234567890123456789")
        .await
        .expect("on loopback");
    assert!(closed_by_peer(&mut stream).await);
    router_still_works(&mut router).await;
}

#[tokio::test]
async fn an_incompatible_socket_type_is_dropped() {
    let mut router = bind(SocketKind::Router).await;
    let mut stream = TcpStream::connect(host_port(&router))
        .await
        .expect("on loopback");
    stream.write_all(&greeting()).await.expect("on loopback");
    stream
        .write_all(&ready("PUB", b""))
        .await
        .expect("on loopback");
    assert!(closed_by_peer(&mut stream).await);
    router_still_works(&mut router).await;
}

#[tokio::test]
async fn a_malformed_frame_after_the_handshake_drops_that_connection_only() {
    let mut router = bind(SocketKind::Router).await;
    let mut stream = handshaken(&host_port(&router), "DEALER", b"bad").await;
    // A message first (it is delivered), then a frame of an absurd size.
    stream
        .write_all(&frame(b"fine", false))
        .await
        .expect("on loopback");
    let mut bogus = vec![0x02];
    bogus.extend_from_slice(&u64::MAX.to_be_bytes());
    stream.write_all(&bogus).await.expect("on loopback");
    assert_eq!(
        guard("the message before the bad frame", router.recv())
            .await
            .expect("on loopback"),
        vec![b("bad"), b("fine")]
    );
    // The bad frame is met by the next receive (connections are read by the receiver),
    // which drops that connection and goes on with the others.
    router_still_works(&mut router).await;
    assert!(closed_by_peer(&mut stream).await);
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let router = bind(SocketKind::Router).await;
    let mut stream = handshaken(&host_port(&router), "DEALER", b"pinger").await;
    // Connections are read (and PINGs answered) while the socket's user receives.
    let (router_tx, mut router_rx) = router.split();
    let receiving = tokio::spawn(async move { router_rx.recv().await });
    stream
        .write_all(&command("PING", b"\x00\x64ctx-1"))
        .await
        .expect("on loopback");
    let (flags, body) = guard("PONG", read_frame(&mut stream)).await;
    assert_eq!(flags, 0x04);
    assert_eq!(body, b"\x04PONGctx-1");
    // The connection still carries messages both ways.
    stream
        .write_all(&frame(b"after ping", false))
        .await
        .expect("on loopback");
    assert_eq!(
        guard("a message after PING", receiving)
            .await
            .expect("on loopback")
            .expect("on loopback"),
        vec![b("pinger"), b("after ping")]
    );
    router_tx
        .send(vec![b("pinger"), b("a"), b("b")])
        .await
        .expect("on loopback");
    assert_eq!(
        guard("the first frame", read_frame(&mut stream)).await,
        (0x01, b"a".to_vec())
    );
    assert_eq!(
        guard("the last frame", read_frame(&mut stream)).await,
        (0x00, b"b".to_vec())
    );
}

#[tokio::test]
async fn zmtp_3_1_subscribe_command_reaches_our_pub() {
    let publisher = bind(SocketKind::Pub).await;
    let mut stream = handshaken(&host_port(&publisher), "SUB", b"").await;
    stream
        .write_all(&command("SUBSCRIBE", b"news."))
        .await
        .expect("on loopback");
    // The subscription is applied asynchronously: publish until something arrives.
    let got = guard("a publication", async {
        loop {
            publisher
                .send(vec![b("sport.x"), b("no")])
                .await
                .expect("on loopback");
            publisher
                .send(vec![b("news.today"), b("yes")])
                .await
                .expect("on loopback");
            let mut flags = [0u8; 1];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(50), stream.peek(&mut flags)).await
            {
                break read_frame(&mut stream).await;
            }
        }
    })
    .await;
    assert_eq!(got, (0x01, b"news.today".to_vec()));
    assert_eq!(read_frame(&mut stream).await, (0x00, b"yes".to_vec()));
    // CANCEL stops it: after a round of publications only the unsubscribed topic is sent,
    // so nothing more arrives.
    stream
        .write_all(&command("CANCEL", b"news."))
        .await
        .expect("on loopback");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Drain what was published before the CANCEL took effect.
    let mut scratch = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(100), stream.read(&mut scratch)).await
    {
        assert!(n > 0, "the PUB closed the connection");
    }
    publisher
        .send(vec![b("news.later"), b("no")])
        .await
        .expect("on loopback");
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut scratch)).await;
    assert!(quiet.is_err(), "a cancelled subscription still received");
}

#[tokio::test]
async fn large_frames_round_trip_intact() {
    let mut router = bind(SocketKind::Router).await;
    let dealer = ZmqTransport::new()
        .connect(
            SocketKind::Dealer,
            router.address(),
            SocketOptions::default().with_identity("big"),
        )
        .await
        .expect("on loopback");
    let (dealer_tx, mut dealer_rx) = dealer.split();
    let big: Bytes = (0..24 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let medium = Bytes::from(vec![5u8; 40_000]);
    let message = vec![b("head"), big.clone(), Bytes::new(), medium.clone()];
    dealer_tx.send(message.clone()).await.expect("on loopback");
    let got = guard("the large message at the router", router.recv())
        .await
        .expect("on loopback");
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], b("big"));
    assert!(got[1..] == message[..], "the large message arrived changed");
    router.send(got).await.expect("on loopback");
    let back = guard("the large message back at the dealer", dealer_rx.recv())
        .await
        .expect("on loopback");
    assert!(back == message, "the large message came back changed");
}

#[tokio::test]
async fn a_peer_that_stops_reading_fills_its_outbox_without_stalling_others() {
    let router = bind(SocketKind::Router).await;
    let mut slow = handshaken(&host_port(&router), "DEALER", b"slow").await;
    let fast = ZmqTransport::new()
        .connect(
            SocketKind::Dealer,
            router.address(),
            SocketOptions::default().with_identity("fast"),
        )
        .await
        .expect("on loopback");
    let (router_tx, mut router_rx) = router.split();
    // The router learns of "fast" from its first message.
    fast.send(vec![b("hello")]).await.expect("on loopback");
    assert_eq!(
        guard("the fast dealer's hello", router_rx.recv())
            .await
            .expect("on loopback"),
        vec![b("fast"), b("hello")]
    );
    // The slow peer reads nothing: its outbox fills until sends to it are refused.
    let chunk = Bytes::from(vec![1u8; 1024 * 1024]);
    let mut sent = 0usize;
    while router_tx.try_send(vec![b("slow"), chunk.clone()]).is_ok() {
        sent += 1;
        assert!(
            sent < 1000,
            "the outbox of a peer that never reads never filled"
        );
    }
    assert!(sent >= 64, "refused after only {sent} MiB");
    // Other peers are not held up.
    router_tx
        .try_send(vec![b("fast"), b("not stalled")])
        .expect("a send to another peer");
    let (_, mut fast_rx) = fast.split();
    assert_eq!(
        guard("the fast dealer's message", fast_rx.recv())
            .await
            .expect("on loopback"),
        vec![b("not stalled")]
    );
    // Once the slow peer reads, a waiting send goes through and everything arrives in order.
    let waiting = tokio::spawn(async move {
        router_tx
            .send(vec![b("slow"), b("last")])
            .await
            .expect("a send that waited for room");
        router_tx
    });
    for index in 0..sent {
        let (flags, body) = guard("a queued frame", read_frame(&mut slow)).await;
        assert_eq!((flags, body.len()), (0x02, chunk.len()), "frame {index}");
    }
    assert_eq!(
        guard("the message that waited", read_frame(&mut slow)).await,
        (0x00, b"last".to_vec())
    );
    drop(guard("the waiting send", waiting).await);
}

/// Messages that arrive just as a reader finds its socket drained are still read: bursts
/// of one to three requests from several dealers, each echoed by the router, on a
/// multi-threaded runtime where another worker can see the new data's readiness event
/// while the reader is between its short read and its note that the socket is empty.
/// Clearing readiness noted after the read lost such an event and hung a waiting reader
/// (a CI run's `every_client_call_works_over_zeromq` stalled on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_arriving_as_the_reader_drains_its_socket_is_not_lost() {
    const DEALERS: usize = 4;
    const ROUNDS: usize = 3_000;
    let mut router = bind(SocketKind::Router).await;
    let address = router.address().to_owned();
    tokio::spawn(async move {
        while let Ok(frames) = router.recv().await {
            if router.send(frames).await.is_err() {
                return;
            }
        }
    });
    let mut dealers = Vec::new();
    for index in 0..DEALERS {
        let address = address.clone();
        dealers.push(tokio::spawn(async move {
            let mut dealer = ZmqTransport::new()
                .connect(
                    SocketKind::Dealer,
                    &address,
                    SocketOptions::default().with_identity(format!("dealer-{index}")),
                )
                .await
                .expect("on loopback");
            for round in 0..ROUNDS {
                let burst = 1 + (round * 7 + index) % 3;
                for sent in 0..burst {
                    dealer
                        .send(vec![b(&format!("{round}.{sent}"))])
                        .await
                        .expect("on loopback");
                }
                for sent in 0..burst {
                    let echo = guard("an echo", dealer.recv()).await.expect("on loopback");
                    assert_eq!(echo, vec![b(&format!("{round}.{sent}"))]);
                }
            }
        }));
    }
    for dealer in dealers {
        dealer.await.expect("the dealer finished its rounds");
    }
}

/// Binds `port` on loopback again with a fresh socket of `kind`.
async fn rebind(kind: SocketKind, port: u16) -> ipp_core::Result<Socket> {
    ZmqTransport::new()
        .bind(
            kind,
            &format!("tcp://127.0.0.1:{port}"),
            SocketOptions::default(),
        )
        .await
}

#[tokio::test]
async fn a_dropped_sockets_port_can_be_bound_again_at_once() {
    for kind in [SocketKind::Router, SocketKind::Pub, SocketKind::Sub] {
        let socket = bind(kind).await;
        let port = socket.port().expect("a bound port");
        // A peer is connected while the socket closes.
        let _peer = TcpStream::connect(host_port(&socket))
            .await
            .expect("connected");
        let (sender, receiver) = socket.split();
        // The receiving side first: a ROUTER keeps discarding on a task of its own until
        // its sending side is dropped too.
        drop(receiver);
        drop(sender);
        let again = rebind(kind, port).await;
        assert!(again.is_ok(), "{kind:?}: {:?}", again.err());
    }
}

/// Publishes `batch` with `send_batch` until the subscriber has something (subscriptions
/// reach a PUB asynchronously), then returns what it received, in order, until `until`.
async fn published_in_batches(
    publisher: &ipp_core::transport::SocketSender,
    subscriber: &mut Socket,
    batch: &[Vec<Bytes>],
    until: &[u8],
) -> Vec<Vec<Bytes>> {
    let first = guard("a publication", async {
        loop {
            publisher
                .send_batch(batch.to_vec())
                .await
                .expect("on loopback");
            if let Ok(received) =
                tokio::time::timeout(Duration::from_millis(50), subscriber.recv()).await
            {
                break received.expect("the SUB is open");
            }
        }
    })
    .await;
    // Batches sent before the subscription took hold were not received; from the first
    // message received on, each batch arrives whole and in order.
    let mut received = vec![first];
    while received.last().map(|frames| &frames[1][..]) != Some(until) {
        let next = guard("the rest of the batch", subscriber.recv()).await;
        received.push(next.expect("the SUB is open"));
    }
    received
}

#[tokio::test]
async fn a_batch_reaches_each_subscriber_in_order_filtered_by_topic() {
    let batch = vec![
        vec![b("news.1"), b("first")],
        vec![b("sport.1"), b("not subscribed")],
        vec![b("news.2"), b("second")],
    ];
    let expected = [
        vec![b("news.1"), b("first")],
        vec![b("news.2"), b("second")],
    ];

    // A bound PUB, as the controller's IOPub relay publishes to clients.
    let publisher = bind(SocketKind::Pub).await;
    let mut subscriber = ZmqTransport::new()
        .connect(
            SocketKind::Sub,
            publisher.address(),
            SocketOptions::default().with_subscription("news."),
        )
        .await
        .expect("connect on loopback");
    let (sender, _receiver) = publisher.split();
    let got = published_in_batches(&sender, &mut subscriber, &batch, b"second").await;
    assert_eq!(got[got.len() - 2..], expected[..], "bound PUB");

    // A connecting PUB, as an engine publishes its status to the controller.
    let mut subscriber = ZmqTransport::new()
        .bind(
            SocketKind::Sub,
            "tcp://127.0.0.1:0",
            SocketOptions::default().with_subscription("news."),
        )
        .await
        .expect("bind on 127.0.0.1");
    let publisher = ZmqTransport::new()
        .connect(
            SocketKind::Pub,
            subscriber.address(),
            SocketOptions::default(),
        )
        .await
        .expect("connect on loopback");
    let (sender, _receiver) = publisher.split();
    let got = published_in_batches(&sender, &mut subscriber, &batch, b"second").await;
    assert_eq!(got[got.len() - 2..], expected[..], "connecting PUB");
}
