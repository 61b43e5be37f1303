//! LiveKit: join tokens, RoomService (Twirp, JSON bodies) and webhook verification.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oracle_calls_proto::{RoomName, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::LiveKitConfig;
use crate::{Error, Result, Secret, jwt};

/// Lifetime of the server's own RoomService tokens.
const ADMIN_TOKEN_SECS: i64 = 60;

/// A LiveKit server as the oracle-calls server uses it.
#[derive(Debug)]
pub struct LiveKit {
    http: reqwest::Client,
    config: LiveKitConfig,
    secret: Secret,
}

/// A webhook event, after its signature was checked. Only the fields the server uses.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// `room_started`, `room_finished`, `participant_joined`, `participant_left`, …
    pub event: String,
    /// The room, when the event concerns one.
    #[serde(default)]
    pub room: Option<WebhookRoom>,
    /// The participant, for participant events.
    #[serde(default)]
    pub participant: Option<WebhookParticipant>,
    /// The event's unique id.
    #[serde(default)]
    pub id: String,
    /// Unix seconds after which the signature is refused (its `exp` plus the leeway): a replay
    /// of this event can only arrive before then.
    #[serde(skip)]
    pub signature_valid_until: i64,
}

/// `WebhookEvent.room`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
pub struct WebhookRoom {
    /// The room name.
    #[serde(default)]
    pub name: String,
    /// The room's metadata: for a call's room, the call id (set at `CreateRoom`).
    #[serde(default)]
    pub metadata: String,
}

/// What [`LiveKit::open_call_room`] found or did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Opened {
    /// The call's room was there already (a repeated sync): its agent is on the way or in it.
    Existing,
    /// The room was made now.
    Created,
    /// The user's claimed room became the call's now.
    Adopted,
}

/// A room that exists in LiveKit now (from `ListRooms`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LiveRoom {
    /// The room name.
    pub name: String,
    /// The room's metadata: for a room this server made for a call, the call id.
    pub metadata: String,
}

/// `WebhookEvent.participant`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
pub struct WebhookParticipant {
    /// The participant identity.
    #[serde(default)]
    pub identity: String,
    /// The participant kind as LiveKit names it (`AGENT` for an agent; absent for a
    /// standard participant).
    #[serde(default)]
    pub kind: String,
    /// Why it left, as LiveKit names it (`CLIENT_INITIATED` when the participant itself left;
    /// `SIGNAL_CLOSE`, `MIGRATION`, … when its connection was lost); absent when not given.
    #[serde(default, rename = "disconnectReason")]
    pub disconnect_reason: String,
}

impl WebhookParticipant {
    /// True for an agent's participant.
    pub fn is_agent(&self) -> bool {
        self.kind == "AGENT"
    }

    /// True when the participant left by itself (not a lost connection it may come back
    /// from with a full reconnect).
    pub fn left_on_purpose(&self) -> bool {
        self.disconnect_reason == "CLIENT_INITIATED"
    }
}

impl LiveKit {
    /// A client for the LiveKit server in `config`, signing with `secret`.
    pub fn new(config: LiveKitConfig, secret: Secret) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .connect_timeout(Duration::from_secs(config.request_timeout_secs.min(5)))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            config,
            secret,
        })
    }

    /// The signaling URL handed to clients.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// A join token for `identity` in `room` only, valid for the configured TTL.
    ///
    /// # Errors
    /// [`Error::Internal`] when the expiry is out of range.
    pub fn join_token(
        &self,
        room: &RoomName,
        identity: &str,
        now: Timestamp,
    ) -> Result<(String, Timestamp)> {
        self.room_token(room, identity, now, false)
    }

    /// A join token for an agent the server hands a call to itself: `identity` in `room`, of
    /// participant kind agent (the `kind` claim and the `agent` grant), so LiveKit and the
    /// webhooks tell it from the user as they do for a dispatched agent.
    ///
    /// # Errors
    /// [`Error::Internal`] when the expiry is out of range.
    pub fn agent_token(
        &self,
        room: &RoomName,
        identity: &str,
        now: Timestamp,
    ) -> Result<(String, Timestamp)> {
        self.room_token(room, identity, now, true)
    }

    fn room_token(
        &self,
        room: &RoomName,
        identity: &str,
        now: Timestamp,
        agent: bool,
    ) -> Result<(String, Timestamp)> {
        let now_s = now.unix_millis() / 1000;
        let ttl = i64::try_from(self.config.token_ttl_secs).unwrap_or(600);
        let exp = now_s + ttl;
        let mut video = json!({
            "roomJoin": true,
            "room": room.as_str(),
            "canPublish": true,
            "canSubscribe": true,
            "canPublishData": true,
        });
        let mut claims = json!({
            "iss": self.config.api_key,
            "sub": identity,
            "nbf": now_s,
            "iat": now_s,
            "exp": exp,
        });
        if agent && let (Some(v), Some(c)) = (video.as_object_mut(), claims.as_object_mut()) {
            v.insert("agent".into(), json!(true));
            c.insert("name".into(), json!("oracle"));
            c.insert("kind".into(), json!("agent"));
        }
        if let Some(c) = claims.as_object_mut() {
            c.insert("video".into(), video);
        }
        let expires = Timestamp::from_unix_millis(exp * 1000)
            .map_err(|_| Error::Internal("token expiry out of range".into()))?;
        Ok((jwt::sign(&claims, &self.secret), expires))
    }

    /// `RoomService.CreateRoom`, with a dispatch of `agent_name` (when given) whose metadata is `metadata`
    /// (the call id: the agent's job carries it); the room's own metadata is `metadata` too, so
    /// the server can tell its call's room from another room of that name.
    ///
    /// # Security
    /// On a room that exists, LiveKit's `CreateRoom` replaces the room's metadata and agent
    /// dispatches: call it on a name only after [`LiveKit::room`] showed no room of another
    /// call there (as [`LiveKit::open_call_room`] does).
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn create_room(
        &self,
        room: &RoomName,
        agent_name: Option<&str>,
        metadata: &str,
    ) -> Result<()> {
        let agents = match agent_name {
            Some(agent_name) => json!([{"agentName": agent_name, "metadata": metadata}]),
            None => json!([]),
        };
        let body = json!({
            "name": room.as_str(),
            "emptyTimeout": self.config.empty_timeout_secs,
            "metadata": metadata,
            "agents": agents,
        });
        self.twirp("CreateRoom", json!({"roomCreate": true}), &body)
            .await?;
        Ok(())
    }

    /// The room of this call, created when it does not exist yet: with `agent_name`
    /// dispatched by LiveKit, or with no dispatch when `agent_name` is `None` (the server hands
    /// the call to an agent itself). A room whose metadata is `adoptable` (the claim marker of
    /// the call's user, when the store holds that user's claim on the room: the early join,
    /// docs/PROTOCOL.md §6.9) becomes the call's: its metadata is set to the call id, then
    /// `agent_name` is dispatched into it. A room of that name made for anything else (another
    /// call, another user's claim, another server or app on the same LiveKit) is left alone.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a room of that name exists and is not this call's;
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn open_call_room(
        &self,
        room: &RoomName,
        agent_name: Option<&str>,
        call_id: &str,
        adoptable: Option<&str>,
    ) -> Result<Opened> {
        let live = self.room(room).await?;
        self.open_found_call_room(room, live, agent_name, call_id, adoptable)
            .await
    }

    /// [`LiveKit::open_call_room`] for a caller that has just looked the room up (`live`).
    ///
    /// # Errors
    /// As [`LiveKit::open_call_room`].
    pub async fn open_found_call_room(
        &self,
        room: &RoomName,
        live: Option<LiveRoom>,
        agent_name: Option<&str>,
        call_id: &str,
        adoptable: Option<&str>,
    ) -> Result<Opened> {
        match live {
            Some(live) if live.metadata == call_id => Ok(Opened::Existing),
            Some(live) if adoptable.is_some_and(|m| live.metadata == m) => {
                // The call id first: the agent checks its job's room against it, and webhooks
                // act on the room only once it carries the call id.
                self.update_room_metadata(room, call_id).await?;
                if let Some(agent_name) = agent_name {
                    self.dispatch_agent(room, agent_name, call_id).await?;
                }
                Ok(Opened::Adopted)
            }
            Some(_) => Err(Error::Conflict(
                "roomId names a LiveKit room that belongs to something else".into(),
            )),
            None => self
                .create_room(room, agent_name, call_id)
                .await
                .map(|()| Opened::Created),
        }
    }

    /// `RoomService.UpdateRoomMetadata`.
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn update_room_metadata(&self, room: &RoomName, metadata: &str) -> Result<()> {
        self.twirp(
            "UpdateRoomMetadata",
            json!({"roomAdmin": true, "room": room.as_str()}),
            &json!({"room": room.as_str(), "metadata": metadata}),
        )
        .await
        .map(drop)
    }

    /// Deletes the room of this call: only when it exists and is the call's own (its metadata
    /// is the call id), never another room of that name.
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn delete_call_room(&self, room: &RoomName, call_id: &str) -> Result<bool> {
        match self.room(room).await? {
            Some(live) if live.metadata == call_id => {
                self.delete_room(room).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `RoomService.ListRooms` for one name: the room when it exists now.
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn room(&self, room: &RoomName) -> Result<Option<LiveRoom>> {
        let v = self
            .twirp(
                "ListRooms",
                json!({"roomList": true}),
                &json!({"names": [room.as_str()]}),
            )
            .await?;
        Ok(v.get("rooms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(room.as_str()))
            .map(|r| LiveRoom {
                name: room.as_str().to_owned(),
                metadata: r
                    .get("metadata")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }))
    }

    /// `RoomService.ListParticipants`: the identities in the room now (none when the room is
    /// gone).
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn participants(&self, room: &RoomName) -> Result<Vec<String>> {
        let v = match self
            .twirp(
                "ListParticipants",
                json!({"roomAdmin": true, "room": room.as_str()}),
                &json!({"room": room.as_str()}),
            )
            .await
        {
            Err(Error::LiveKitBadAnswer(m)) if m.contains("not_found") => return Ok(Vec::new()),
            other => other?,
        };
        Ok(v.get("participants")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("identity").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    /// `AgentDispatchService.CreateDispatch`: asks for the agent `agent_name` in `room` again,
    /// with `metadata` (the call id) as its job's metadata. LiveKit answers before any worker
    /// took the job.
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn dispatch_agent(
        &self,
        room: &RoomName,
        agent_name: &str,
        metadata: &str,
    ) -> Result<()> {
        self.twirp_to(
            "livekit.AgentDispatchService",
            "CreateDispatch",
            json!({"roomAdmin": true, "room": room.as_str()}),
            &json!({"agentName": agent_name, "room": room.as_str(), "metadata": metadata}),
        )
        .await
        .map(drop)
    }

    /// `AgentDispatchService.ListDispatch`: the agent names dispatched into `room` (none when
    /// the room is gone).
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn dispatches(&self, room: &RoomName) -> Result<Vec<String>> {
        let v = match self
            .twirp_to(
                "livekit.AgentDispatchService",
                "ListDispatch",
                json!({"roomAdmin": true, "room": room.as_str()}),
                &json!({"room": room.as_str()}),
            )
            .await
        {
            Err(Error::LiveKitBadAnswer(m)) if m.contains("not_found") => return Ok(Vec::new()),
            other => other?,
        };
        // Twirp's JSON may name fields as in the .proto file or in lowerCamelCase.
        let field =
            |v: &Value, proto: &str, camel: &str| v.get(proto).or_else(|| v.get(camel)).cloned();
        Ok(field(&v, "agent_dispatches", "agentDispatches")
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| {
                field(d, "agent_name", "agentName").and_then(|n| n.as_str().map(str::to_owned))
            })
            .collect())
    }

    /// `RoomService.DeleteRoom`. A room that is already gone is not an error.
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn delete_room(&self, room: &RoomName) -> Result<()> {
        match self
            .twirp(
                "DeleteRoom",
                json!({"roomCreate": true}),
                &json!({"room": room.as_str()}),
            )
            .await
        {
            Err(Error::LiveKitBadAnswer(m)) if m.contains("not_found") => Ok(()),
            other => other.map(drop),
        }
    }

    /// `RoomService.ListRooms`: the names of the rooms that exist now.
    ///
    /// # Errors
    /// [`Error::LiveKitUnavailable`] / [`Error::LiveKitBadAnswer`].
    pub async fn list_rooms(&self) -> Result<Vec<String>> {
        let v = self
            .twirp("ListRooms", json!({"roomList": true}), &json!({}))
            .await?;
        Ok(v.get("rooms")
            .and_then(Value::as_array)
            .map(|rooms| {
                rooms
                    .iter()
                    .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Checks a webhook's signature (JWT in `Authorization`, no `Bearer`; its `sha256` claim is
    /// the padded standard base64 of SHA-256 of the raw body) before parsing the body.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a missing or bad signature, [`Error::BadRequest`] for a
    /// signed body that does not parse.
    pub fn verify_webhook(
        &self,
        body: &[u8],
        authorization: Option<&str>,
        now: Timestamp,
    ) -> Result<WebhookEvent> {
        let token = authorization
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthorized("webhook has no Authorization"))?;
        let claims = jwt::verify(token, &self.secret, now.unix_millis() / 1000)
            .map_err(|_| Error::Unauthorized("webhook signature is invalid"))?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.config.api_key.as_str()) {
            return Err(Error::Unauthorized(
                "webhook was signed with another API key",
            ));
        }
        let want = claims
            .get("sha256")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let got = STANDARD.encode(Sha256::digest(body));
        if want.is_empty() || !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
            return Err(Error::Unauthorized(
                "webhook body does not match its signature",
            ));
        }
        let mut event: WebhookEvent = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("webhook body: {e}")))?;
        // `verify` refused a token without `exp`.
        event.signature_valid_until = claims
            .get("exp")
            .and_then(Value::as_i64)
            .unwrap_or_default()
            .saturating_add(jwt::LEEWAY_SECS);
        Ok(event)
    }

    async fn twirp(&self, method: &str, grant: Value, body: &Value) -> Result<Value> {
        self.twirp_to("livekit.RoomService", method, grant, body)
            .await
    }

    async fn twirp_to(
        &self,
        service: &str,
        method: &str,
        grant: Value,
        body: &Value,
    ) -> Result<Value> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({
            "iss": self.config.api_key,
            "sub": "oracle-calls-server",
            "nbf": now,
            "exp": now + ADMIN_TOKEN_SECS,
            "video": grant,
        });
        let url = format!(
            "{}/twirp/{service}/{method}",
            self.config.http_url.trim_end_matches('/')
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(jwt::sign(&claims, &self.secret))
            .json(body)
            .send()
            .await
            .map_err(|e| Error::LiveKitUnavailable(format!("{method}: {}", e.without_url())))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::LiveKitUnavailable(format!("{method}: {}", e.without_url())))?;
        if !status.is_success() {
            let code = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            return Err(Error::LiveKitBadAnswer(format!(
                "{method}: {status} {code}"
            )));
        }
        serde_json::from_str(&text)
            .map_err(|_| Error::LiveKitBadAnswer(format!("{method}: body is not JSON")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lk() -> LiveKit {
        let config = LiveKitConfig {
            url: "ws://x".into(),
            http_url: "http://127.0.0.1:1".into(),
            api_key: "devkey".into(),
            token_ttl_secs: 600,
            empty_timeout_secs: 10,
            request_timeout_secs: 1,
            max_redispatches: 3,
            direct_dispatch: true,
            direct_dispatch_fallback_ms: 3000,
            user_rejoin_grace_ms: 15_000,
            early_join: true,
            room_claim_ttl_secs: 60,
        };
        LiveKit::new(config, Secret::new("secret")).unwrap()
    }

    #[test]
    fn webhook_body_hash_matches_livekits_documented_example() {
        // docs: livekit-interop.md §4.
        let body = br#"{"event":"room_started","room":{"sid":"RM_abc","name":"test"},"id":"EV_1","createdAt":"1700000000"}"#;
        assert_eq!(
            STANDARD.encode(Sha256::digest(body)),
            "kKEkT1dJoO7dzkWBOTsI6zrmwPMquUv1bfHFsKcWr3c="
        );
        let now = Timestamp::from_unix_millis(1_700_000_000_000).unwrap();
        let token = jwt::sign(
            &json!({"iss":"devkey","exp":1_700_000_300,"sha256":"kKEkT1dJoO7dzkWBOTsI6zrmwPMquUv1bfHFsKcWr3c="}),
            &Secret::new("secret"),
        );
        let ev = lk().verify_webhook(body, Some(&token), now).unwrap();
        assert_eq!(ev.event, "room_started");
        assert_eq!(ev.room.unwrap().name, "test");
        // One changed byte of the body, a Bearer prefix, no header: all refused.
        let mut other = body.to_vec();
        other[10] ^= 1;
        assert!(lk().verify_webhook(&other, Some(&token), now).is_err());
        assert!(
            lk().verify_webhook(body, Some(&format!("Bearer {token}")), now)
                .is_err()
        );
        assert!(lk().verify_webhook(body, None, now).is_err());
    }
}
