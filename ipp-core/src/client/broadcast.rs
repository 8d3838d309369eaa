//! [`BroadcastView`]: one request, fanned out by the broadcast scheduler (spec §7.7).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::call::{self, PackedCall};
use super::error::ClientResult;
use super::io::{Channel, OnEngines, Outgoing, Route, Sink};
use super::result::{AsyncResult, ResultShared};
use super::Client;
use crate::protocol::to_json_bytes;
use crate::serialize::{Bincode, Serializer};

/// Sends one request that the controller copies to every target engine.
///
/// Without coalescing each engine's reply arrives on its own (the result's `msg_ids` are
/// the sub-ids `<msg_id>_<engine uuid>`); with coalescing the controller joins them into one
/// reply. Either way awaiting gives one value per engine, in target order, and
/// [`AsyncResult::get_dict`] maps engine ids to values.
#[derive(Clone, Debug)]
pub struct BroadcastView {
    client: Client,
    targets: Option<Vec<u32>>,
    coalescing: bool,
}

impl BroadcastView {
    pub(crate) fn new(client: Client, targets: Option<Vec<u32>>, coalescing: bool) -> Self {
        Self {
            client,
            targets,
            coalescing,
        }
    }

    /// Restricts the view to these engines.
    pub fn with_targets(mut self, targets: &[u32]) -> Self {
        self.targets = Some(targets.to_vec());
        self
    }

    /// Calls the registered `function` with `arg` (bincode) on every target.
    ///
    /// # Errors
    /// Bad targets, a serialization error, or a closed client.
    pub async fn apply<A, R>(&self, function: &str, arg: &A) -> ClientResult<AsyncResult<R>>
    where
        A: Serialize + Sync + ?Sized,
        R: DeserializeOwned,
    {
        self.apply_with(&Bincode, function, arg).await
    }

    /// As [`BroadcastView::apply`], encoding the argument with `serializer`.
    ///
    /// # Errors
    /// As [`BroadcastView::apply`].
    pub async fn apply_with<S, A, R>(
        &self,
        serializer: &S,
        function: &str,
        arg: &A,
    ) -> ClientResult<AsyncResult<R>>
    where
        S: Serializer,
        A: Serialize + Sync + ?Sized,
        R: DeserializeOwned,
    {
        let targets = self.client.resolve(self.targets.as_deref())?;
        let call = PackedCall::encode(serializer, function, arg)?;
        let pairs: Vec<serde_json::Value> =
            targets.iter().map(|(id, uuid)| json!([uuid, id])).collect();
        let metadata = to_json_bytes(&json!({
            "targets": pairs,
            "is_broadcast": true,
            "is_coalescing": self.coalescing,
        }));
        let header = self.client.session().header("apply_request");
        let frames = call::frames(&self.client, Vec::new(), &header, &metadata, &call);
        let (shared, routes) = if self.coalescing {
            let shared = ResultShared::new(vec![(header.msg_id.clone(), header.date.clone())]);
            let ids: Arc<[u32]> = targets.iter().map(|(id, _)| *id).collect();
            let route = Route {
                sink: Sink::Result {
                    shared: Arc::clone(&shared),
                    index: 0,
                },
                engines: OnEngines::Many(ids),
            };
            (shared, vec![(header.msg_id.clone(), route)])
        } else {
            let sub_ids: Vec<String> = targets
                .iter()
                .map(|(_, uuid)| format!("{}_{uuid}", header.msg_id))
                .collect();
            let shared = ResultShared::new(
                sub_ids
                    .iter()
                    .map(|id| (id.clone(), header.date.clone()))
                    .collect(),
            );
            let routes = sub_ids
                .into_iter()
                .zip(&targets)
                .enumerate()
                .map(|(index, (sub_id, (engine, _)))| {
                    let route = Route {
                        sink: Sink::Result {
                            shared: Arc::clone(&shared),
                            index,
                        },
                        engines: OnEngines::One(*engine),
                    };
                    (sub_id, route)
                })
                .collect();
            (shared, routes)
        };
        self.client
            .submit(vec![Outgoing {
                channel: Channel::Broadcast,
                frames,
                routes,
            }])
            .await?;
        Ok(AsyncResult::new(shared, call::decode_one::<R>, true))
    }
}
