//! One ZMTP connection: the handshake, writing from the caller's task, reading in whoever
//! polls it.
//!
//! Writes go straight to the socket from the sender's task with vectored writes
//! ([`Conn::write`]). Only when the kernel's buffer is full, or messages to this
//! connection come in a burst, is the rest kept in the connection's outbox and a
//! short-lived task started to write it all at once (as the socket becomes writable);
//! later messages queue behind it, so order is kept.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ipp_core::transport::{Frames, SocketKind};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Command, Decoder, Frame, ProtocolError, ReadBuf};

/// A peer whose outbox holds more than this many bytes is full: a ROUTER or DEALER send
/// waits for room, a PUB skips that peer (libzmq's high-water mark, in bytes).
pub(crate) const OUTBOX_LIMIT: usize = 64 * 1024 * 1024;

/// At most this many buffers per vectored write.
const MAX_IOVECS: usize = 64;

/// What the peer announced in its READY.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// Its `Identity` property (empty when it sent none).
    pub(crate) identity: Bytes,
}

/// Messages closer together than this on one connection are batched: the first is
/// written at once, the next ones wait for the sender's task to yield and go out together
/// in one write (fewer system calls and TCP segments, fewer wake-ups at the receiver).
const BURST_GAP: Duration = Duration::from_micros(50);

/// Chunks smaller than this are copied together when they wait in the outbox.
const COALESCE: usize = 4 * 1024;

/// Bytes waiting to be written.
#[derive(Debug, Default)]
struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Small chunks copied together, logically after `chunks`.
    tail: BytesMut,
    bytes: usize,
    /// A flushing task is running (it owns writing until the outbox is empty).
    flushing: bool,
    /// When a message was last written straight from the sender's task.
    last_direct: Option<Instant>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    fn push(&mut self, chunk: Bytes) {
        self.bytes += chunk.len();
        if chunk.len() < COALESCE {
            self.tail.extend_from_slice(&chunk);
        } else {
            self.seal();
            self.chunks.push_back(chunk);
        }
    }

    /// Moves the coalesced small chunks to the end of `chunks`.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }
}

/// One live connection, shared by the senders (through the socket's peer table) and its
/// reader.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    out: Mutex<Outbox>,
    /// Signalled when the outbox drains.
    room: Notify,
    closed: AtomicBool,
    /// Cancelled when the connection or its socket closes: stops its tasks.
    pub(crate) cancel: CancellationToken,
    /// The routing id a ROUTER knows this peer by.
    pub(crate) routing_id: Bytes,
    /// A PUB's view of the peer's subscriptions.
    pub(crate) subscriptions: Mutex<Vec<Bytes>>,
    /// The runtime the connection was made on: flushing tasks run there, whichever thread
    /// sends.
    runtime: tokio::runtime::Handle,
}

impl Conn {
    /// Wraps a connection whose handshake is done.
    ///
    /// # Panics
    /// Outside a tokio runtime (connections are only made inside one).
    pub(crate) fn new(stream: TcpStream, routing_id: Bytes, cancel: CancellationToken) -> Self {
        Self {
            stream,
            out: Mutex::default(),
            room: Notify::new(),
            closed: AtomicBool::new(false),
            cancel,
            routing_id,
            subscriptions: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Marks the connection dead; true the first time.
    pub(crate) fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        if first {
            self.cancel.cancel();
            self.room.notify_waiters();
        }
        first
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the outbox is over [`OUTBOX_LIMIT`].
    pub(crate) fn is_full(&self) -> bool {
        self.outbox().bytes > OUTBOX_LIMIT
    }

    /// Waits until the outbox is not full (or the connection is closed).
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Writes `chunks` (one or more encoded messages) now, as far as the socket takes them;
    /// the rest is flushed in the background, in order.
    ///
    /// # Errors
    /// The connection failed (it is then closed).
    pub(crate) fn write(self: &Arc<Self>, chunks: Vec<Bytes>) -> io::Result<()> {
        if self.is_closed() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut out = self.outbox();
        let now = Instant::now();
        let idle = !out.flushing && out.is_empty();
        let direct = idle
            && out
                .last_direct
                .is_none_or(|last| now.saturating_duration_since(last) >= BURST_GAP);
        if !direct {
            // Batched: written by the flushing task once this task yields.
            for chunk in chunks {
                out.push(chunk);
            }
            if !out.flushing {
                out.flushing = true;
                drop(out);
                self.start_flushing();
            }
            return Ok(());
        }
        out.last_direct = Some(now);
        let mut pending: VecDeque<Bytes> = chunks.into();
        match write_some(&self.stream, &mut pending) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => {
                drop(out);
                self.close();
                return Err(error);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        out.bytes = pending.iter().map(Bytes::len).sum();
        out.chunks = pending;
        out.flushing = true;
        drop(out);
        self.start_flushing();
        Ok(())
    }

    fn start_flushing(self: &Arc<Self>) {
        let conn = Arc::clone(self);
        self.runtime.spawn(async move { conn.flush().await });
    }

    /// Writes the outbox now and then as the socket becomes writable, until it is empty.
    ///
    /// It always tries once before looking at cancellation, so what was sent just before
    /// the socket was dropped still goes out when the kernel has room for it.
    async fn flush(self: Arc<Self>) {
        loop {
            let (result, drained) = self.write_outbox();
            match result {
                Ok(()) if drained => return,
                Ok(()) => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::debug!(%error, "write failed; connection closed");
                    break;
                }
            }
            tokio::select! {
                biased;
                ready = self.stream.writable() => {
                    if ready.is_err() {
                        break;
                    }
                }
                () = self.cancel.cancelled() => break,
            }
        }
        self.close();
    }

    /// Writes what the outbox holds as far as the socket takes it; `true` when it is
    /// empty afterwards (the flushing task then ends).
    fn write_outbox(&self) -> (io::Result<()>, bool) {
        let mut out = self.outbox();
        let before = out.bytes;
        out.seal();
        let result = write_some(&self.stream, &mut out.chunks);
        out.bytes = out.chunks.iter().map(Bytes::len).sum();
        let drained = out.is_empty();
        if drained {
            out.flushing = false;
        }
        drop(out);
        if before > OUTBOX_LIMIT || drained {
            self.room.notify_waiters();
        }
        (result, drained)
    }

    /// Reads what the socket has into `decoder`.
    ///
    /// `Ready(Ok(()))` after a read of at least one byte; `Pending` (the task woken when
    /// more arrives) when there is nothing to read.
    fn poll_fill(&self, decoder: &mut Decoder, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.is_closed() {
                return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
            }
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            match self.read_noting_drained(decoder) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {
                    ipp_core::busy_poll::note_activity();
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Reads once into `decoder`; a read shorter than asked also tells tokio the socket is
    /// drained, so the next receive waits for the next readiness event instead of first
    /// making a read that can only answer `WouldBlock` (one system call saved per message
    /// received, as tokio's own `poll_read` does).
    ///
    /// The read runs inside `try_io`, which notes the readiness generation *before* the
    /// read: readiness that arrives after it (data sent after our read saw the socket
    /// empty) is newer and stays set. Clearing with a generation noted after the read
    /// could erase exactly that event and leave its message unread until the next one
    /// arrives, which is the hang this order prevents.
    fn read_noting_drained(&self, decoder: &mut Decoder) -> io::Result<usize> {
        let mut outcome = None;
        let _ = self.stream.try_io(Interest::READABLE, || {
            let (read, asked) = match decoder.read_buf() {
                ReadBuf::Small(buf) => {
                    let asked = buf.chunk_mut().len();
                    (self.stream.try_read_buf(buf), asked)
                }
                ReadBuf::Large(mut buf) => {
                    let asked = buf.chunk_mut().len();
                    (self.stream.try_read_buf(&mut buf), asked)
                }
            };
            let drained = matches!(read, Ok(count) if count > 0 && count < asked);
            outcome = Some(read);
            if drained {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        // `None`: not ready, so `try_io` did not call the closure.
        outcome.unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }
}

/// Writes from the front of `chunks` until all are written or the socket would block.
fn write_some(stream: &TcpStream, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !chunks.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(chunks.iter()) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let mut written = match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        while written > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if front.len() <= written {
                written -= front.len();
                chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// An error on one connection: IO or malformed input.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed or the peer closed it.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer sent something that is not ZMTP as we speak it.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// The reading end of a connection: assembles frames into messages, answers PINGs.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) conn: Arc<Conn>,
    decoder: Decoder,
    /// Frames of the message being assembled.
    frames: Frames,
    /// Prepended to every message (a ROUTER's routing id of the peer).
    prefix: Option<Bytes>,
}

/// What a reader produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A complete message.
    Message(Frames),
    /// A ZMTP 3.1 SUBSCRIBE (true) or CANCEL (false) command.
    Subscription(bool, Bytes),
}

impl Reader {
    pub(crate) fn new(conn: Arc<Conn>, decoder: Decoder, prefix: Option<Bytes>) -> Self {
        Self {
            conn,
            decoder,
            frames: Vec::new(),
            prefix,
        }
    }

    /// The next message or subscription command from this peer.
    ///
    /// # Cancel safety
    /// All state is in `self`: dropping the future between polls loses nothing.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, ConnError>> {
        loop {
            while let Some(frame) = self.decoder.decode()? {
                match frame {
                    Frame::Message { more, body } => {
                        if self.frames.is_empty() {
                            if let Some(prefix) = &self.prefix {
                                self.frames.push(prefix.clone());
                            }
                        }
                        self.frames.push(body);
                        if !more {
                            return Poll::Ready(Ok(Incoming::Message(std::mem::take(
                                &mut self.frames,
                            ))));
                        }
                    }
                    Frame::Command(body) => match Command::parse(body)? {
                        Command::Ping { context } => {
                            self.conn
                                .write(vec![codec::encode_command("PONG", &context)])?;
                        }
                        Command::Error(reason) => {
                            return Poll::Ready(Err(ProtocolError::PeerError(reason).into()))
                        }
                        Command::Subscribe(prefix) => {
                            return Poll::Ready(Ok(Incoming::Subscription(true, prefix)))
                        }
                        Command::Cancel(prefix) => {
                            return Poll::Ready(Ok(Incoming::Subscription(false, prefix)))
                        }
                        Command::Ready(_) | Command::Pong | Command::Other(_) => {}
                    },
                }
            }
            match self.conn.poll_fill(&mut self.decoder, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Waits for the next message or subscription command.
    pub(crate) async fn next(&mut self) -> Result<Incoming, ConnError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// The socket type we announce for `kind`.
pub(crate) fn socket_type(kind: SocketKind) -> &'static str {
    match kind {
        SocketKind::Router => "ROUTER",
        SocketKind::Dealer => "DEALER",
        SocketKind::Pub => "PUB",
        SocketKind::Sub => "SUB",
    }
}

/// Whether a peer of type `theirs` may talk to our `kind` (ZMTP's compatibility table).
fn compatible(kind: SocketKind, theirs: &[u8]) -> bool {
    let allowed: &[&[u8]] = match kind {
        SocketKind::Router => &[b"DEALER", b"REQ", b"ROUTER"],
        SocketKind::Dealer => &[b"REP", b"DEALER", b"ROUTER"],
        SocketKind::Pub => &[b"SUB", b"XSUB"],
        SocketKind::Sub => &[b"PUB", b"XPUB"],
    };
    allowed.contains(&theirs)
}

/// Writes all of `data` (handshake only).
async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads into `decoder` until it has at least `len` bytes buffered (handshake only).
async fn fill(stream: &TcpStream, decoder: &mut Decoder, len: usize) -> io::Result<()> {
    while decoder.buffered() < len {
        stream.readable().await?;
        let read = match decoder.read_buf() {
            ReadBuf::Small(buf) => stream.try_read_buf(buf),
            ReadBuf::Large(mut buf) => stream.try_read_buf(&mut buf),
        };
        match read {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Runs the NULL handshake on a fresh connection: greetings, then READY both ways.
///
/// Returns the peer's READY properties and the decoder holding whatever the peer sent
/// after its READY.
pub(crate) async fn handshake(
    stream: &TcpStream,
    kind: SocketKind,
    identity: &Bytes,
    timeout: Duration,
) -> Result<(PeerInfo, Decoder), ConnError> {
    let steps = async {
        stream.set_nodelay(true)?;
        write_all(stream, &codec::greeting()).await?;
        let mut decoder = Decoder::default();
        fill(stream, &mut decoder, codec::GREETING_LEN).await?;
        codec::check_greeting(&decoder.take(codec::GREETING_LEN))?;
        let routed = matches!(kind, SocketKind::Router | SocketKind::Dealer);
        let ready = codec::encode_ready(socket_type(kind), routed.then_some(&identity[..]));
        write_all(stream, &ready).await?;
        let body = loop {
            match decoder.decode()? {
                Some(Frame::Command(body)) => break body,
                Some(Frame::Message { .. }) => {
                    return Err(ProtocolError::ExpectedReady("a message".into()).into())
                }
                None => {
                    let want = decoder.buffered() + 1;
                    fill(stream, &mut decoder, want).await?;
                }
            }
        };
        let properties = match Command::parse(body)? {
            Command::Ready(properties) => properties,
            Command::Error(reason) => return Err(ProtocolError::PeerError(reason).into()),
            other => return Err(ProtocolError::ExpectedReady(format!("{other:?}")).into()),
        };
        let theirs = codec::property(&properties, "Socket-Type")
            .cloned()
            .unwrap_or_default();
        if !compatible(kind, &theirs) {
            return Err(ProtocolError::Incompatible {
                ours: socket_type(kind),
                theirs: String::from_utf8_lossy(&theirs).into_owned(),
            }
            .into());
        }
        let identity = codec::property(&properties, "Identity")
            .cloned()
            .unwrap_or_default();
        Ok((PeerInfo { identity }, decoder))
    };
    match tokio::time::timeout(timeout, steps).await {
        Ok(result) => result,
        Err(_) => Err(ConnError::Timeout(timeout)),
    }
}
