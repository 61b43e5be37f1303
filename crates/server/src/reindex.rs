//! `oracle-calls serve --reindex`: rebuilds the call store from Matrix, the record of truth.
//!
//! The bot device pages back through every room it has joined, decrypts each call event and
//! its `m.replace` edits, applies the checks that hold for an event of any age (transport,
//! sender binding, oracle, room, initial status; not the freshness window), and stores what
//! passes with the furthest status its edits reached. Calls already stored are kept and only
//! moved forward. What cannot be used is counted by reason, never silently dropped.
//!
//! It needs the bot's device store (`data_dir/matrix`): the room keys live there. A lost
//! database can be rebuilt; a lost device cannot read the old events.

use std::collections::{BTreeMap, HashMap};

use matrix_sdk::Room;
use matrix_sdk::room::MessagesOptions;
use oracle_calls_proto::{CALL_EVENT_TYPE, CallId, CallStatus, EventId, OraclesCallContent};
use serde_json::Value;
use tracing::{info, warn};

use crate::matrix::{Bot, FetchedEvent};
use crate::store::Inserted;
use crate::{AppState, Error, Result};

/// What a rebuild found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReindexReport {
    /// Joined rooms paged through.
    pub rooms: usize,
    /// Timeline events read.
    pub events: usize,
    /// Call events (originals) found.
    pub call_events: usize,
    /// Calls stored that the store did not have.
    pub added: usize,
    /// Calls already stored whose status moved forward.
    pub advanced: usize,
    /// Calls already stored and unchanged.
    pub unchanged: usize,
    /// Call events not stored, by the check they failed.
    pub skipped: BTreeMap<String, usize>,
    /// Rooms whose history could not be read (room id and why); the rebuild went on
    /// without them.
    pub failed_rooms: Vec<(String, String)>,
}

/// Rebuilds `state`'s store from the rooms of its bot. Safe while the server runs: stored
/// calls only move forward and inserts of a known call are no-ops.
///
/// # Errors
/// [`Error::MatrixUnavailable`] without a bot; store failures. A room whose history cannot be
/// read is skipped and listed in [`ReindexReport::failed_rooms`].
pub async fn reindex(state: &AppState) -> Result<ReindexReport> {
    let bot = state
        .matrix()
        .ok_or_else(|| Error::MatrixUnavailable("the oracle's bot is not running".into()))?;
    let mut report = ReindexReport::default();
    for room in bot.client().joined_rooms() {
        report.rooms += 1;
        match reindex_room(state, bot, &room, &mut report).await {
            Ok(()) => {}
            // The store failing fails the rebuild; one unreadable room does not.
            Err(e @ (Error::Store(_) | Error::StoreUnavailable(_) | Error::Migrate(_))) => {
                return Err(e);
            }
            Err(e) => {
                warn!(room = %room.room_id(), error = %e, "room skipped by the rebuild");
                report
                    .failed_rooms
                    .push((room.room_id().to_string(), e.to_string()));
            }
        }
    }
    info!(
        rooms = report.rooms,
        events = report.events,
        added = report.added,
        advanced = report.advanced,
        skipped = report.skipped.values().sum::<usize>(),
        failed_rooms = report.failed_rooms.len(),
        "store rebuilt from Matrix"
    );
    Ok(report)
}

/// One call's original event and the statuses its valid edits carry.
struct Found {
    original: FetchedEvent,
    edits: Vec<(i64, String, OraclesCallContent)>,
}

async fn reindex_room(
    state: &AppState,
    bot: &Bot,
    room: &Room,
    report: &mut ReindexReport,
) -> Result<()> {
    let mut originals: HashMap<String, FetchedEvent> = HashMap::new();
    let mut edits: Vec<(String, FetchedEvent)> = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut opts = MessagesOptions::backward();
        opts.from = from.clone();
        opts.limit = 100u32.into();
        let page = room
            .messages(opts)
            .await
            .map_err(crate::matrix::matrix_error)?;
        for ev in &page.chunk {
            report.events += 1;
            let fetched = FetchedEvent::from_timeline(room, ev).await?;
            let id = ev.event_id().map(|e| e.to_string()).unwrap_or_default();
            if fetched.event_type == "m.room.encrypted" {
                // Undecryptable: it may or may not be a call event; count it.
                *report
                    .skipped
                    .entry("the bot device could not decrypt an event".into())
                    .or_default() += 1;
                continue;
            }
            if fetched.event_type != CALL_EVENT_TYPE || fetched.sender == bot.user_id().as_str() {
                if fetched.event_type == CALL_EVENT_TYPE && fetched.is_edit() {
                    edits.push((id, fetched));
                }
                continue;
            }
            if fetched.is_edit() {
                edits.push((id, fetched));
            } else {
                originals.insert(id, fetched);
            }
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    let mut found: HashMap<String, Found> = originals
        .into_iter()
        .map(|(id, original)| {
            (
                id,
                Found {
                    original,
                    edits: Vec::new(),
                },
            )
        })
        .collect();
    for (_, edit) in edits {
        let target = edit
            .content
            .pointer("/m.relates_to/event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let new_content = edit
            .content
            .get("m.new_content")
            .cloned()
            .and_then(|v| serde_json::from_value::<OraclesCallContent>(v).ok());
        let (Some(target), Some(new_content)) = (target, new_content) else {
            continue;
        };
        if edit.check_transport().is_err() {
            continue;
        }
        if let Some(f) = found.get_mut(&target) {
            // Only the call's user and the oracle's bot may move a call on.
            if edit.sender == f.original.sender || edit.sender == bot.user_id().as_str() {
                f.edits
                    .push((edit.origin_server_ts, edit.sender.clone(), new_content));
            }
        }
    }
    for (event_id, f) in found {
        report.call_events += 1;
        restore_call(state, room, &event_id, f, report).await?;
    }
    Ok(())
}

async fn restore_call(
    state: &AppState,
    room: &Room,
    event_id: &str,
    f: Found,
    report: &mut ReindexReport,
) -> Result<()> {
    let skip = |report: &mut ReindexReport, why: String| {
        *report.skipped.entry(why).or_default() += 1;
    };
    let room_name = f
        .original
        .content
        .get("roomId")
        .and_then(Value::as_str)
        .and_then(|r| oracle_calls_proto::RoomName::parse(r).ok());
    let (Ok(ev_id), Some(room_name)) = (EventId::parse(event_id), room_name) else {
        skip(report, "the content is malformed".into());
        return Ok(());
    };
    let call_id = CallId::new(ev_id, room_name);
    let content = match crate::sync::validate_stored(state, &call_id, &f.original) {
        Ok(c) => c,
        Err(Error::Validation(why)) => {
            skip(report, why);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let rank = |s: CallStatus| match s {
        CallStatus::Pending => 0,
        CallStatus::Active => 1,
        CallStatus::Ended => 2,
    };
    let mut status = CallStatus::Pending;
    let mut ended_at = None;
    for (_, _, c) in &f.edits {
        if rank(c.call_status) > rank(status) {
            status = c.call_status;
        }
        if c.call_status == CallStatus::Ended {
            ended_at = c.call_ended_at.map(|t| t.unix_millis()).or(ended_at);
        }
    }
    let now = crate::now().unix_millis();
    let store = state.store();
    let inserted = store
        .insert_call(
            &call_id,
            room.room_id().as_str(),
            &f.original.sender,
            &content,
            f.original.origin_server_ts,
        )
        .await?;
    if inserted == Inserted::RoomTaken {
        skip(report, "another call holds the room name".into());
        return Ok(());
    }
    let moved = store
        .restore_status(&call_id, status, ended_at, now)
        .await?;
    match inserted {
        Inserted::New => {
            report.added += 1;
            if status == CallStatus::Pending {
                store.set_mirrored(&call_id, status).await?;
            }
        }
        Inserted::Existing(_) if moved => report.advanced += 1,
        Inserted::Existing(_) => report.unchanged += 1,
        Inserted::RoomTaken => {}
    }
    if status != CallStatus::Ended && inserted == Inserted::New {
        warn!(call_id = %call_id, %status, "a call rebuilt from Matrix is still open");
    }
    Ok(())
}
