//! `registration_request` → `registration_reply`, and `unregistration_request`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::protocol::{EngineConnectionInfo, RemoteError, Session};
use crate::transport::{SocketKind, SocketOptions, Transport};

/// What a successful registration gave us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registered {
    pub(crate) id: u32,
    pub(crate) heartbeat_period: Duration,
}

/// Why a registration attempt failed.
#[derive(Debug)]
pub(crate) enum RegistrationFailure {
    /// The controller answered with an error (e.g. `KeyError: uuid '…' in use`).
    Refused(RemoteError),
    /// No usable answer (no reply in time, or a transport failure).
    NoAnswer(Error),
}

impl RegistrationFailure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Self::Refused(error) => Error::Config(format!(
                "the controller refused the registration: {}: {}",
                error.ename, error.evalue
            )),
            Self::NoAnswer(error) => error,
        }
    }
}

/// Builds `tcp://host:port` from the connection info's interface.
pub(crate) fn address(info: &EngineConnectionInfo, port: u16) -> String {
    format!("{}:{port}", info.interface)
}

/// Registers the engine (`session.id()` is its uuid), asking for `requested_id` if given.
///
/// A fresh DEALER (identity = uuid) is used for each attempt, so a late reply to an earlier
/// attempt can never be mistaken for this one's.
pub(crate) async fn register(
    transport: &Arc<dyn Transport>,
    info: &EngineConnectionInfo,
    session: &Session,
    requested_id: Option<u32>,
    timeout: Duration,
) -> Result<Registered, RegistrationFailure> {
    let options = SocketOptions::default().with_identity(session.id().to_owned());
    let mut socket = transport
        .connect(
            SocketKind::Dealer,
            &address(info, info.registration),
            options,
        )
        .await
        .map_err(RegistrationFailure::NoAnswer)?;
    let mut content = json!({"uuid": session.id()});
    if let Some(id) = requested_id {
        content["id"] = json!(id);
    }
    let request = session.message("registration_request", content);
    socket
        .send(session.serialize(&request))
        .await
        .map_err(RegistrationFailure::NoAnswer)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frames = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Ok(Ok(frames)) => frames,
            Ok(Err(err)) => return Err(RegistrationFailure::NoAnswer(err)),
            Err(_) => {
                return Err(RegistrationFailure::NoAnswer(Error::Timeout {
                    what: "registration_reply",
                    after: timeout,
                }))
            }
        };
        let reply = match session.deserialize(frames) {
            Ok(reply) if reply.header.msg_type == "registration_reply" => reply,
            Ok(other) => {
                tracing::warn!(msg_type = %other.header.msg_type,
                    "unexpected message on the registration socket; ignored");
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "dropped a bad message on the registration socket");
                continue;
            }
        };
        let content = reply.content_map();
        if content.get("status").and_then(Value::as_str) != Some("ok") {
            return Err(RegistrationFailure::Refused(RemoteError::from_content(
                content,
            )));
        }
        let id = content
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        let Some(id) = id else {
            return Err(RegistrationFailure::NoAnswer(Error::invalid_message(
                "registration_reply without a valid engine id",
            )));
        };
        let period_ms = content
            .get("hb_period")
            .and_then(Value::as_u64)
            .unwrap_or(3000)
            .max(1);
        return Ok(Registered {
            id,
            heartbeat_period: Duration::from_millis(period_ms),
        });
    }
}

/// Tells the controller this engine is leaving (`unregistration_request {id}`), best effort:
/// the message is queued on a fresh DEALER that is kept open for `linger` so the transport
/// can deliver it (the Hub sends no reply).
pub(crate) async fn unregister(
    transport: &Arc<dyn Transport>,
    info: &EngineConnectionInfo,
    session: &Session,
    id: u32,
    linger: Duration,
) {
    let options = SocketOptions::default().with_identity(session.id().to_owned());
    let socket = match transport
        .connect(
            SocketKind::Dealer,
            &address(info, info.registration),
            options,
        )
        .await
    {
        Ok(socket) => socket,
        Err(err) => {
            tracing::debug!(error = %err, "cannot send unregistration_request");
            return;
        }
    };
    let request = session.message("unregistration_request", json!({"id": id}));
    if socket.send(session.serialize(&request)).await.is_ok() {
        // The transport has no flush; give it a moment to put the message on the wire.
        tokio::time::sleep(linger).await;
    }
}
