//! Interop with real pyzmq (libzmq) peers, driven by `tests/fixtures/pyzmq_peer.py`.
//!
//! The Python interpreter comes from `IPP_TEST_PYTHON` (a venv with pyzmq), else `python3`.
//! If it cannot `import zmq` the tests fail, they do not skip. Every Python process is
//! started by the test, bound to 127.0.0.1, and killed when the test ends.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use ipp_core::transport::{Socket, SocketKind, SocketOptions, Transport};
use ipp_transport_zmq::ZmqTransport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const GUARD: Duration = Duration::from_secs(30);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pyzmq_peer.py");

fn python() -> String {
    std::env::var("IPP_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

async fn guard<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {GUARD:?} waiting for {what}"))
}

/// One running `pyzmq_peer.py`.
struct Peer {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    async fn start(scenario: &str, address: &str) -> Self {
        let python = python();
        let check = Command::new(&python)
            .args(["-c", "import zmq"])
            .output()
            .await
            .unwrap_or_else(|err| {
                panic!("cannot run {python} (set IPP_TEST_PYTHON to a python with pyzmq): {err}")
            });
        assert!(
            check.status.success(),
            "{python} cannot import zmq; set IPP_TEST_PYTHON to a python with pyzmq \
             installed (e.g. a venv after `pip install pyzmq`): {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut child = Command::new(&python)
            .arg(SCRIPT)
            .args([scenario, address])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {python} {SCRIPT}: {err}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        Self {
            child,
            stdout: BufReader::new(stdout).lines(),
        }
    }

    async fn line(&mut self) -> String {
        guard("a line from the pyzmq peer", self.stdout.next_line())
            .await
            .expect("reading the pyzmq peer's stdout")
            .expect("the pyzmq peer exited early (see its stderr above)")
    }

    async fn tell_stop(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(b"stop\n")
            .await
            .expect("writing to the pyzmq peer");
        stdin
            .flush()
            .await
            .expect("flushing the pyzmq peer's stdin");
    }

    /// Waits for the peer to exit and checks it succeeded with "OK".
    async fn finish(mut self) {
        let line = self.line().await;
        assert_eq!(line, "OK", "the pyzmq peer did not report success");
        let status = guard("the pyzmq peer to exit", self.child.wait())
            .await
            .expect("waiting for the pyzmq peer");
        assert!(status.success(), "the pyzmq peer failed: {status}");
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn bind(kind: SocketKind, options: SocketOptions) -> Socket {
    ZmqTransport::new()
        .bind(kind, "tcp://127.0.0.1:0", options)
        .await
        .expect("bind on 127.0.0.1")
}

async fn recv(socket: &mut Socket, what: &str) -> Vec<Bytes> {
    guard(what, socket.recv()).await.expect("recv")
}

#[tokio::test]
async fn pyzmq_dealer_with_identity_talks_to_our_bound_router() {
    let mut router = bind(SocketKind::Router, SocketOptions::default()).await;
    let peer = Peer::start("dealer", router.address()).await;
    let got = recv(&mut router, "the pyzmq dealer's message").await;
    assert_eq!(
        got,
        vec![
            b("py-dealer"),
            b("hello"),
            Bytes::new(),
            Bytes::from_static(&[0, 255])
        ]
    );
    router
        .send(vec![b("py-dealer"), b("reply"), Bytes::new()])
        .await
        .unwrap();
    peer.finish().await;
}

#[tokio::test]
async fn pyzmq_router_with_identity_connects_to_our_bound_router() {
    let mut router = bind(SocketKind::Router, SocketOptions::default()).await;
    let peer = Peer::start("router", router.address()).await;
    // We cannot route to the engine before its handshake: ping until it answers.
    let got = guard("the pyzmq router's pong", async {
        loop {
            router.send(vec![b("py-engine"), b("ping")]).await.unwrap();
            if let Ok(got) = tokio::time::timeout(Duration::from_millis(50), router.recv()).await {
                break got.unwrap();
            }
        }
    })
    .await;
    assert_eq!(got, vec![b("py-engine"), b("pong")]);
    router.send(vec![b("py-engine"), b("done")]).await.unwrap();
    peer.finish().await;
}

#[tokio::test]
async fn our_bound_pub_reaches_a_pyzmq_sub() {
    let publisher = bind(SocketKind::Pub, SocketOptions::default()).await;
    let mut peer = Peer::start("sub", publisher.address()).await;
    // The subscription reaches us asynchronously: publish until the peer has had enough.
    guard("the pyzmq sub to receive three messages", async {
        while !peer.exited() {
            publisher.send(vec![b("other.x"), b("no")]).await.unwrap();
            publisher
                .send(vec![b("topic.x"), b("payload")])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    peer.finish().await;
}

async fn bound_sub_receives_from(scenario: &str) {
    let mut subscriber = bind(
        SocketKind::Sub,
        SocketOptions::default().with_subscription("engine."),
    )
    .await;
    let mut peer = Peer::start(scenario, subscriber.address()).await;
    if scenario == "xpub" {
        assert_eq!(peer.line().await, "SUBSCRIBED");
    }
    for _ in 0..3 {
        let got = recv(&mut subscriber, "a message from the pyzmq publisher").await;
        assert_eq!(got, vec![b("engine.1"), b("hi")], "from {scenario}");
    }
    peer.tell_stop().await;
    peer.finish().await;
}

#[tokio::test]
async fn pyzmq_xpub_connects_to_our_bound_sub() {
    bound_sub_receives_from("xpub").await;
}

#[tokio::test]
async fn pyzmq_pub_connects_to_our_bound_sub() {
    bound_sub_receives_from("pub").await;
}

#[tokio::test]
async fn our_dealer_talks_to_a_bound_pyzmq_router() {
    let mut peer = Peer::start("bound-router", "-").await;
    let line = peer.line().await;
    let port = line
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("expected PORT <n>, got {line:?}"));
    let mut dealer = ZmqTransport::new()
        .connect(
            SocketKind::Dealer,
            &format!("tcp://127.0.0.1:{port}"),
            SocketOptions::default().with_identity("rs-dealer"),
        )
        .await
        .unwrap();
    dealer.send(vec![b("hello")]).await.unwrap();
    assert_eq!(
        recv(&mut dealer, "the pyzmq router's reply").await,
        vec![b("world")]
    );
    peer.tell_stop().await;
    peer.finish().await;
}

/// Starts a scenario whose pyzmq socket binds; returns it and its address.
async fn bound_peer(scenario: &str) -> (Peer, String) {
    let mut peer = Peer::start(scenario, "-").await;
    let line = peer.line().await;
    let port = line
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("expected PORT <n>, got {line:?}"))
        .to_owned();
    (peer, format!("tcp://127.0.0.1:{port}"))
}

#[tokio::test]
async fn our_connecting_sub_receives_from_a_bound_pyzmq_pub() {
    let (mut peer, address) = bound_peer("bound-pub").await;
    let mut subscriber = ZmqTransport::new()
        .connect(
            SocketKind::Sub,
            &address,
            SocketOptions::default().with_subscription("engine."),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let got = recv(&mut subscriber, "a message from the bound pyzmq PUB").await;
        assert_eq!(got, vec![b("engine.1"), b("hi")]);
    }
    peer.tell_stop().await;
    peer.finish().await;
}

#[tokio::test]
async fn our_connecting_pub_reaches_a_bound_pyzmq_sub() {
    let (mut peer, address) = bound_peer("bound-sub").await;
    let publisher = ZmqTransport::new()
        .connect(SocketKind::Pub, &address, SocketOptions::default())
        .await
        .unwrap();
    guard("the bound pyzmq SUB to receive three messages", async {
        while !peer.exited() {
            publisher.send(vec![b("other.x"), b("no")]).await.unwrap();
            publisher
                .send(vec![b("topic.x"), b("payload")])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    peer.finish().await;
}

#[tokio::test]
async fn many_and_large_messages_round_trip_through_a_pyzmq_router() {
    let (mut peer, address) = bound_peer("echo-router").await;
    let dealer = ZmqTransport::new()
        .connect(
            SocketKind::Dealer,
            &address,
            SocketOptions::default().with_identity("rs-echo"),
        )
        .await
        .unwrap();
    let (tx, mut rx) = dealer.split();
    let big: Bytes = (0..8 * 1024 * 1024u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    let messages: Vec<Vec<Bytes>> = (0..2_000u32)
        .map(|i| {
            let mut message = vec![b("seq"), Bytes::from(i.to_be_bytes().to_vec())];
            if i % 500 == 0 {
                message.push(big.clone());
            }
            message
        })
        .collect();
    let sending = async {
        for message in &messages {
            tx.send(message.clone()).await.unwrap();
        }
    };
    let receiving = async {
        for (i, message) in messages.iter().enumerate() {
            let got = guard("an echoed message", rx.recv()).await.expect("recv");
            assert!(&got == message, "echoed message {i} differs");
        }
    };
    tokio::join!(sending, receiving);
    peer.tell_stop().await;
    peer.finish().await;
}
