//! What the relays and schedulers tell the Hub, and what the Hub tells the task scheduler.

use super::wire_fields::ReadFields;
use crate::protocol::WireMessage;

/// Something the Hub must record or act on. Relays hand over the frames they routed; the
/// Hub parses them off the routing path.
#[derive(Debug)]
pub(crate) enum HubEvent {
    /// A direct request went to an engine (`in`): frames `[uuid, client_rid, DELIM, …]`.
    MuxRequest(WireMessage),
    /// A direct reply came back (`out`): frames `[client_rid, uuid, DELIM, …]`.
    MuxReply(WireMessage),
    /// A load-balanced task arrived (`intask`), with the msg_id the scheduler read from it
    /// and, when the Hub records tasks, the record's fields it read on the way (boxed: every
    /// event is as large as the largest).
    TaskSubmitted {
        msg_id: String,
        read: Option<Box<ReadFields>>,
        wire: WireMessage,
    },
    /// A task was sent to an engine (`tracktask`).
    TaskAssigned { msg_id: String, engine: String },
    /// A task's final reply (`outtask`), from an engine or made by the scheduler, with the
    /// task's msg_id (the reply's parent) and, when the Hub records tasks, the record's
    /// fields the scheduler read on the way.
    TaskResult {
        msg_id: String,
        read: Option<Box<ReadFields>>,
        wire: WireMessage,
    },
    /// An IOPub message an engine published.
    Iopub(WireMessage),
    /// Engines whose first heartbeat arrived.
    HeartsStarted(Vec<String>),
    /// Engines that missed too many heartbeats.
    HeartsStopped(Vec<String>),
}

/// Engine membership, as the Hub tells the task scheduler.
#[derive(Debug, Clone)]
pub(crate) enum EngineEvent {
    /// An engine finished registering.
    Registered { uuid: String },
    /// An engine is gone; its outstanding tasks must fail or be retried.
    Unregistered { uuid: String },
}

/// What the Hub and the control relay ask of the task scheduler.
#[derive(Debug)]
pub(crate) enum TaskCommand {
    /// A task the Hub resubmits, as if a client had sent it on the task port (the signed
    /// frames, starting at the delimiter).
    Resubmit(WireMessage),
    /// A client sent `abort_request` for these ids: tasks still queued in the scheduler
    /// are answered as aborted at once, without waiting to reach an engine.
    Abort(Vec<String>),
}
