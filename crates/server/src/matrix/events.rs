//! Call events as the bot device sees them, the transport checks, and edits from users.

use matrix_sdk::Room;
use matrix_sdk::deserialized_responses::TimelineEvent;
use oracle_calls_proto::{CallId, CallReason, CallStatus, EventId, OraclesCallContent};
use serde_json::Value;
use tracing::info;

use crate::{AppState, Error, Result};

/// One event fetched (and decrypted when possible) by the bot device, with what the
/// checks of DESIGN §3 step 6 need.
#[derive(Clone, Debug)]
pub struct FetchedEvent {
    /// The Matrix room.
    pub matrix_room_id: String,
    /// `sender` of the event.
    pub sender: String,
    /// `origin_server_ts`, Unix ms.
    pub origin_server_ts: i64,
    /// `type` after decryption (`m.room.encrypted` when it could not be decrypted).
    pub event_type: String,
    /// The (decrypted) content.
    pub content: Value,
    /// The Megolm session's sender, when the event was decrypted.
    pub decrypted_sender: Option<String>,
    /// Whether the room has encryption enabled.
    pub room_encrypted: bool,
}

impl FetchedEvent {
    pub(crate) async fn from_timeline(room: &Room, ev: &TimelineEvent) -> Result<Self> {
        let json: Value = serde_json::from_str(ev.raw().json().get())
            .map_err(|_| Error::MatrixBadAnswer("event is not JSON".into()))?;
        let text = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let room_encrypted = room
            .latest_encryption_state()
            .await
            .map_err(super::matrix_error)?
            .is_encrypted();
        Ok(Self {
            matrix_room_id: room.room_id().to_string(),
            sender: text("sender"),
            origin_server_ts: json
                .get("origin_server_ts")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            event_type: text("type"),
            content: json.get("content").cloned().unwrap_or(Value::Null),
            decrypted_sender: ev.encryption_info().map(|i| i.sender.to_string()),
            room_encrypted,
        })
    }

    /// The checks that do not depend on the content: the event decrypted, in an encrypted
    /// room, and its Megolm sender is its claimed sender. The error names the failed check.
    ///
    /// # Errors
    /// The reason, as text for a 422.
    pub fn check_transport(&self) -> Result<(), &'static str> {
        if self.event_type == "m.room.encrypted" {
            return Err("the oracle's device could not decrypt the event");
        }
        if !self.room_encrypted {
            return Err("the room is not encrypted");
        }
        let Some(megolm_sender) = &self.decrypted_sender else {
            return Err("plaintext call event in an encrypted room");
        };
        if *megolm_sender != self.sender {
            return Err("the decrypted sender differs from the event's sender");
        }
        Ok(())
    }

    /// True when the content is an `m.replace` edit.
    pub fn is_edit(&self) -> bool {
        self.content
            .pointer("/m.relates_to/rel_type")
            .and_then(Value::as_str)
            == Some("m.replace")
    }
}

/// A user's `m.replace` edit of a call event seen on the sync loop: ending it in Matrix ends
/// it here.
pub(crate) async fn apply_edit(state: &AppState, ev: &FetchedEvent) -> Result<()> {
    if !ev.is_edit() {
        return Ok(());
    }
    let original = ev
        .content
        .pointer("/m.relates_to/event_id")
        .and_then(Value::as_str)
        .and_then(|s| EventId::parse(s).ok());
    let new_content = ev
        .content
        .get("m.new_content")
        .cloned()
        .and_then(|v| serde_json::from_value::<OraclesCallContent>(v).ok());
    let (Some(original), Some(new_content)) = (original, new_content) else {
        return Ok(());
    };
    let call_id = CallId::new(original, new_content.room_id.clone());
    let Some(rec) = state.store().call(&call_id).await? else {
        return Ok(());
    };
    if rec.sender != ev.sender || rec.matrix_room_id != ev.matrix_room_id {
        return Ok(());
    }
    if new_content.call_status == CallStatus::Ended {
        if rec.status != CallStatus::Ended {
            info!(call_id = %call_id, "the user ended the call in Matrix");
            crate::calls::transition_quietly(
                state,
                rec,
                CallStatus::Ended,
                Some(CallReason::UserHangup),
            )
            .await?;
        }
        // Matrix shows the call ended (the user's own edit): the bot owes it nothing more.
        state
            .store()
            .set_mirrored(&call_id, CallStatus::Ended)
            .await?;
    }
    Ok(())
}
