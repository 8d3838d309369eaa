//! Hub queries (spec §5) and control requests (abort, shutdown) on [`Client`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ClientError, ClientResult};
use super::io::Channel;
use super::Client;
use crate::protocol::apply::read_reply;
use crate::protocol::{JsonMap, Message, RemoteError};

/// A count, or the list of msg_ids when asked for `verbose` output.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum QueueEntry {
    /// How many.
    Count(usize),
    /// Which.
    Ids(Vec<String>),
}

/// One engine's queues, as `queue_request` reports them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EngineQueue {
    /// Direct requests pending on the engine.
    pub queue: QueueEntry,
    /// Finished direct and load-balanced requests.
    pub completed: QueueEntry,
    /// Load-balanced tasks assigned to the engine and not finished.
    pub tasks: QueueEntry,
}

/// The reply to [`Client::queue_status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStatus {
    /// Per engine id.
    pub engines: BTreeMap<u32, EngineQueue>,
    /// Tasks the scheduler has not assigned yet.
    pub unassigned: QueueEntry,
}

/// The reply to [`Client::result_status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ResultStatus {
    /// Ids still running or queued.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Ids with a recorded result.
    #[serde(default)]
    pub completed: Vec<String>,
}

/// The content of a reply, or its error dict as a [`ClientError::Remote`].
fn ok_content(msg: Message) -> ClientResult<(JsonMap, Vec<Bytes>)> {
    let content = msg.content_map();
    if content.get("status").and_then(Value::as_str) == Some("ok") {
        Ok((content.clone(), msg.buffers))
    } else {
        Err(ClientError::Remote(Box::new(RemoteError::from_content(
            content,
        ))))
    }
}

fn field<T: DeserializeOwned>(content: &JsonMap, key: &str) -> ClientResult<T> {
    serde_json::from_value(content.get(key).cloned().unwrap_or(Value::Null)).map_err(|err| {
        ClientError::Core(crate::Error::invalid_message(format!(
            "bad `{key}` in the Hub's reply: {err}"
        )))
    })
}

/// Which records [`Client::purge`] drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge<'a> {
    /// Every completed record.
    All,
    /// These records.
    MsgIds(&'a [String]),
}

impl Client {
    async fn hub(&self, msg_type: &str, content: Value) -> ClientResult<(JsonMap, Vec<Bytes>)> {
        let msg = self.session().message(msg_type, content);
        ok_content(self.request(Channel::Query, Vec::new(), msg, None).await?)
    }

    /// Queue counts (or msg_id lists when `verbose`) per engine; `None` = all engines.
    ///
    /// # Errors
    /// [`ClientError::Remote`] for unknown targets; timeouts and a closed client.
    pub async fn queue_status(
        &self,
        targets: Option<&[u32]>,
        verbose: bool,
    ) -> ClientResult<QueueStatus> {
        let (content, _) = self
            .hub(
                "queue_request",
                json!({"targets": targets, "verbose": verbose}),
            )
            .await?;
        let mut engines = BTreeMap::new();
        for (key, value) in &content {
            if let Ok(id) = key.parse::<u32>() {
                let queue: EngineQueue = serde_json::from_value(value.clone()).map_err(|err| {
                    ClientError::Core(crate::Error::invalid_message(format!(
                        "bad queue entry for engine {id}: {err}"
                    )))
                })?;
                engines.insert(id, queue);
            }
        }
        Ok(QueueStatus {
            engines,
            unassigned: field(&content, "unassigned")?,
        })
    }

    /// Task records matching a MongoDB-style query, with the given keys (all for `None`).
    /// Buffers are not returned.
    ///
    /// # Errors
    /// [`ClientError::Remote`] for a bad query or key; timeouts and a closed client.
    pub async fn db_query(
        &self,
        query: Value,
        keys: Option<&[&str]>,
    ) -> ClientResult<Vec<JsonMap>> {
        let keys: Option<Vec<&str>> = keys.map(|k| {
            k.iter()
                .copied()
                .filter(|k| *k != "buffers" && *k != "result_buffers")
                .collect()
        });
        let (content, _) = self
            .hub("db_request", json!({"query": query, "keys": keys}))
            .await?;
        field(&content, "records")
    }

    /// Which of `msg_ids` are pending and which completed, according to the Hub.
    ///
    /// # Errors
    /// [`ClientError::Remote`] (`KeyError`) for an id the Hub does not know.
    pub async fn result_status(&self, msg_ids: &[String]) -> ClientResult<ResultStatus> {
        let (content, _) = self
            .hub(
                "result_request",
                json!({"msg_ids": msg_ids, "status_only": true}),
            )
            .await?;
        Ok(ResultStatus {
            pending: field(&content, "pending")?,
            completed: field(&content, "completed")?,
        })
    }

    /// Waits (polling the Hub every 100 ms, up to `timeout`) for a task submitted by any
    /// client, and decodes its returned values (a load-balanced or direct Rust call).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if still pending; [`ClientError::Remote`] for a task that
    /// failed or an unknown id; [`ClientError::TaskAborted`].
    pub async fn get_result<T: DeserializeOwned>(
        &self,
        msg_id: &str,
        timeout: Duration,
    ) -> ClientResult<Vec<T>> {
        let poll = async {
            loop {
                let (content, buffers) = self
                    .hub(
                        "result_request",
                        json!({"msg_ids": [msg_id], "status_only": false}),
                    )
                    .await?;
                let pending: Vec<String> = field(&content, "pending")?;
                if pending.is_empty() {
                    return Ok::<_, ClientError>((content, buffers));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let (content, buffers) =
            tokio::time::timeout(timeout, poll)
                .await
                .map_err(|_| ClientError::Timeout {
                    what: "a task's result in the Hub",
                    after: timeout,
                })??;
        let record = content
            .get(msg_id)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let result = record
            .get("result_content")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match result.get("status").and_then(Value::as_str) {
            Some("ok") => {}
            Some("aborted") => {
                return Err(ClientError::TaskAborted {
                    msg_id: msg_id.to_owned(),
                })
            }
            _ => {
                return Err(ClientError::Remote(Box::new(RemoteError::from_content(
                    &result,
                ))))
            }
        }
        let payloads = read_reply(&result, &buffers)?;
        Ok(payloads
            .iter()
            .map(|p| p.decode::<T>())
            .collect::<crate::Result<Vec<T>>>()?)
    }

    /// Every msg_id the Hub has recorded, in submission order.
    ///
    /// # Errors
    /// [`ClientError::Remote`] when the Hub keeps no history (NoDb); timeouts.
    pub async fn hub_history(&self) -> ClientResult<Vec<String>> {
        let (content, _) = self.hub("history_request", json!({})).await?;
        field(&content, "history")
    }

    /// Asks the Hub to run these tasks again; returns old id → new id.
    ///
    /// # Errors
    /// [`ClientError::Remote`] (`KeyError`) for unknown ids; timeouts.
    pub async fn resubmit(&self, msg_ids: &[String]) -> ClientResult<BTreeMap<String, String>> {
        let (content, _) = self
            .hub("resubmit_request", json!({"msg_ids": msg_ids}))
            .await?;
        field(&content, "resubmitted")
    }

    /// Drops finished records from the Hub's database: the listed ones (or all), then
    /// those of the given engines.
    ///
    /// # Errors
    /// [`ClientError::Remote`] for a pending id or an unknown engine; timeouts.
    pub async fn purge(&self, records: Purge<'_>, engine_ids: &[u32]) -> ClientResult<()> {
        let msg_ids = match records {
            Purge::All => json!("all"),
            Purge::MsgIds(ids) => json!(ids),
        };
        self.hub(
            "purge_request",
            json!({"msg_ids": msg_ids, "engine_ids": engine_ids}),
        )
        .await?;
        Ok(())
    }

    /// Sends a control request to each target engine and waits for every reply. With
    /// `death_is_success` (shutdown), an engine that unregisters before its reply reaches
    /// us (its `EngineError`) counts as done.
    async fn control(
        &self,
        targets: Option<&[u32]>,
        msg_type: &str,
        content: Value,
        death_is_success: bool,
    ) -> ClientResult<()> {
        let targets = self.resolve(targets)?;
        let waits = targets.into_iter().map(|(id, uuid)| {
            let msg = self.session().message(msg_type, content.clone());
            async move {
                let reply = self
                    .request(Channel::Control, vec![Bytes::from(uuid)], msg, Some(id))
                    .await;
                match reply {
                    Ok(reply) => ok_content(reply).map(|_| ()),
                    Err(err) if death_is_success && err.is_remote("EngineError") => Ok(()),
                    Err(err) => Err(err),
                }
            }
        });
        let results = futures::future::join_all(waits).await;
        results.into_iter().collect()
    }

    /// Aborts queued requests on the targets (`None` = every engine): the given ids, or
    /// everything queued for `None`. Aborted requests finish with
    /// [`ClientError::TaskAborted`]; a request already running is not interrupted.
    ///
    /// # Errors
    /// Bad targets; an engine's error reply; timeouts.
    pub async fn abort(
        &self,
        targets: Option<&[u32]>,
        msg_ids: Option<&[String]>,
    ) -> ClientResult<()> {
        let ids: Vec<String> = msg_ids.map(<[String]>::to_vec).unwrap_or_default();
        self.control(targets, "abort_request", json!({"msg_ids": ids}), false)
            .await
    }

    /// Shuts engines down over control (`None` = every engine, and none are required when
    /// `hub` is set and none are registered), then, if `hub`, the controller itself; the
    /// client then closes.
    ///
    /// # Errors
    /// Bad targets; an error reply; timeouts.
    pub async fn shutdown(&self, targets: Option<&[u32]>, hub: bool) -> ClientResult<()> {
        let skip_engines = hub && targets.is_none() && self.ids().is_empty();
        if !skip_engines {
            self.control(targets, "shutdown_request", json!({"restart": false}), true)
                .await?;
        }
        if hub {
            match self.hub("shutdown_request", json!({})).await {
                // The notification can overtake the reply: either says the Hub is stopping.
                Ok(_) | Err(ClientError::ControllerShutdown) => {}
                Err(err) => return Err(err),
            }
            self.close().await;
        }
        Ok(())
    }
}
