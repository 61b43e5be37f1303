//! The call context every envelope is bound to.

use oracle_calls_proto::{CallType, Did, RoomName, SessionId};
use sha2::{Digest, Sha256};

/// The domain-separation label at the start of the context bytes.
pub const CONTEXT_LABEL: &[u8] = b"oracle-calls/call-key/v1";

/// The facts of one call that an envelope is bound to, so it cannot be lifted into another:
/// session, LiveKit room, user, oracle and call type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    session_id: SessionId,
    room_name: RoomName,
    user_did: Did,
    oracle_did: Did,
    call_type: CallType,
}

impl CallContext {
    /// The context of one call.
    pub fn new(
        session_id: SessionId,
        room_name: RoomName,
        user_did: Did,
        oracle_did: Did,
        call_type: CallType,
    ) -> Self {
        Self {
            session_id,
            room_name,
            user_did,
            oracle_did,
            call_type,
        }
    }

    /// The exact bytes bound into envelopes (docs/PROTOCOL.md): the label
    /// `oracle-calls/call-key/v1`, then for sessionId, roomId, userDid, oracleDid, callType in
    /// that order a u32 big-endian byte length and the UTF-8 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let fields: [&str; 5] = [
            self.session_id.as_str(),
            self.room_name.as_str(),
            self.user_did.as_str(),
            self.oracle_did.as_str(),
            self.call_type.as_str(),
        ];
        let mut out = Vec::with_capacity(CONTEXT_LABEL.len() + 5 * 4 + 160);
        out.extend_from_slice(CONTEXT_LABEL);
        for f in fields {
            // Every field is validated to at most a few hundred bytes, far below u32::MAX.
            let len = u32::try_from(f.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(f.as_bytes());
        }
        out
    }

    /// SHA-256 of [`Self::to_bytes`].
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// The session.
    pub fn session_id(&self) -> &SessionId {
        &self.session_id
    }
    /// The LiveKit room.
    pub fn room_name(&self) -> &RoomName {
        &self.room_name
    }
    /// The user.
    pub fn user_did(&self) -> &Did {
        &self.user_did
    }
    /// The oracle.
    pub fn oracle_did(&self) -> &Did {
        &self.oracle_did
    }
    /// Audio or video.
    pub fn call_type(&self) -> CallType {
        self.call_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_length_prefixed_in_order() {
        let c = CallContext::new(
            SessionId::parse("s").unwrap(),
            RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
            Did::parse("did:a:b").unwrap(),
            Did::parse("did:c:d").unwrap(),
            CallType::Video,
        );
        let mut want = b"oracle-calls/call-key/v1".to_vec();
        for f in [
            "s",
            "oc-0123456789abcdef0123456789abcdef",
            "did:a:b",
            "did:c:d",
            "video",
        ] {
            want.extend_from_slice(&(f.len() as u32).to_be_bytes());
            want.extend_from_slice(f.as_bytes());
        }
        assert_eq!(c.to_bytes(), want);
    }
}
