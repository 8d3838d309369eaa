//! The engine's heart: echoes every ping of the controller's heart monitor, and notices when
//! the controller went away or was replaced.
//!
//! It runs in its own task so a long request never delays an echo. While the engine is
//! (re-)registering, echoes are paused: the controller's heart monitor completes a
//! registration on the *first* echo it sees, so an echo sent before the
//! `registration_request` would be taken as an unknown heart and the registration would
//! never complete.

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

use crate::transport::Socket;

/// Why the heart thinks the controller is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// No ping for longer than the allowed silence.
    Silence,
    /// The ping payload (the monitor's lifetime in seconds) went backwards: a new heart
    /// monitor, i.e. the controller restarted.
    Restarted,
}

/// The runtime's handles on the heart task.
#[derive(Debug)]
pub(crate) struct HeartLink {
    /// `Some(silence)` while echoing (a ping gap longer than `silence` means the controller
    /// was lost), `None` while paused. Every `send_replace` resumes a heart that paused
    /// itself.
    pub(crate) echo: watch::Sender<Option<Duration>>,
    /// When the last ping arrived.
    pub(crate) last_ping: watch::Receiver<Instant>,
    /// Losses the heart noticed itself (it has paused when it reports one).
    pub(crate) losses: mpsc::Receiver<Loss>,
}

/// Creates the channels; returns the runtime's link and the heart task's future.
pub(crate) fn start(
    ping: Socket,
    pong: Socket,
    silence: Duration,
) -> (HeartLink, impl std::future::Future<Output = ()> + Send) {
    let (echo_tx, echo_rx) = watch::channel(Some(silence));
    let (ping_tx, ping_rx) = watch::channel(Instant::now());
    let (loss_tx, loss_rx) = mpsc::channel(4);
    let link = HeartLink {
        echo: echo_tx,
        last_ping: ping_rx,
        losses: loss_rx,
    };
    (link, run(ping, pong, echo_rx, ping_tx, loss_tx))
}

/// The monitor's lifetime, when the payload is one (ipyparallel's and ours are).
fn lifetime(payload: &Bytes) -> Option<f64> {
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

async fn run(
    ping: Socket,
    pong: Socket,
    mut echo: watch::Receiver<Option<Duration>>,
    last_ping: watch::Sender<Instant>,
    losses: mpsc::Sender<Loss>,
) {
    let (_, mut ping_rx) = ping.split();
    let (pong_tx, _) = pong.split();
    let mut previous_ping = Instant::now();
    let mut previous_lifetime: Option<f64> = None;
    let mut paused_by_loss = false;
    loop {
        // Cancel-safe: `recv` either returns a message or leaves it queued.
        let Ok(frames) = ping_rx.recv().await else {
            break;
        };
        let now = Instant::now();
        let gap = now.saturating_duration_since(previous_ping);
        previous_ping = now;
        last_ping.send_replace(now);
        let this_lifetime = frames.first().and_then(lifetime);
        let restarted = matches!((previous_lifetime, this_lifetime),
            (Some(before), Some(now)) if now < before);
        previous_lifetime = this_lifetime.or(previous_lifetime);

        if echo.has_changed().unwrap_or(false) {
            echo.borrow_and_update();
            paused_by_loss = false;
        }
        let Some(silence) = *echo.borrow() else {
            continue; // the runtime is re-registering
        };
        if paused_by_loss {
            continue;
        }
        let loss = if restarted {
            Some(Loss::Restarted)
        } else if gap > silence {
            Some(Loss::Silence)
        } else {
            None
        };
        if let Some(loss) = loss {
            tracing::warn!(
                ?loss,
                gap_ms = gap.as_millis() as u64,
                "lost the controller; pausing heartbeats to re-register"
            );
            paused_by_loss = true;
            let _ = losses.try_send(loss);
            continue;
        }
        // A pong that cannot be queued now is useless later: drop it rather than wait.
        if let Err(err) = pong_tx.try_send(frames) {
            tracing::debug!(error = %err, "heartbeat echo dropped");
        }
    }
    tracing::debug!("heartbeat stopped: the ping socket closed");
}
