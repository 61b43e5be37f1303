//! Call type and call status, with the legal status transitions.

use serde::{Deserialize, Serialize};

/// Audio-only or audio + video.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallType {
    /// Audio only.
    Audio,
    /// Audio and video.
    Video,
}

impl CallType {
    /// The wire name (`audio`, `video`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

impl std::fmt::Display for CallType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CallType {
    type Err = crate::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audio" => Ok(Self::Audio),
            "video" => Ok(Self::Video),
            _ => Err(crate::ParseError::Request(
                "call type must be `audio` or `video`",
            )),
        }
    }
}

/// Where a call is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallStatus {
    /// Created by the user; not yet accepted by the server.
    Pending,
    /// Accepted by the server; media may flow.
    Active,
    /// Over. Terminal.
    Ended,
}

/// A status change that the call lifecycle does not allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("illegal call status transition {from} -> {to}")]
pub struct IllegalTransition {
    /// The current status.
    pub from: CallStatus,
    /// The requested status.
    pub to: CallStatus,
}

impl CallStatus {
    /// The wire name (`pending`, `active`, `ended`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }

    /// Moves to `to` if the lifecycle allows it: pending→active, pending→ended, active→ended.
    ///
    /// # Errors
    /// [`IllegalTransition`] for every other pair, including a status to itself.
    pub fn transition(self, to: CallStatus) -> Result<CallStatus, IllegalTransition> {
        use CallStatus::{Active, Ended, Pending};
        match (self, to) {
            (Pending, Active) | (Pending, Ended) | (Active, Ended) => Ok(to),
            _ => Err(IllegalTransition { from: self, to }),
        }
    }

    /// True when no transition leaves this status.
    pub fn is_terminal(self) -> bool {
        self == Self::Ended
    }
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CallStatus {
    type Err = crate::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "ended" => Ok(Self::Ended),
            _ => Err(crate::ParseError::Request(
                "call status must be `pending`, `active` or `ended`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [CallStatus; 3] = [CallStatus::Pending, CallStatus::Active, CallStatus::Ended];

    #[test]
    fn exactly_three_transitions_are_legal() {
        let mut legal = vec![];
        for from in ALL {
            for to in ALL {
                match from.transition(to) {
                    Ok(s) => {
                        assert_eq!(s, to);
                        legal.push((from, to));
                    }
                    Err(e) => assert_eq!(e, IllegalTransition { from, to }),
                }
            }
        }
        use CallStatus::*;
        assert_eq!(
            legal,
            vec![(Pending, Active), (Pending, Ended), (Active, Ended)]
        );
        assert!(Ended.is_terminal() && !Active.is_terminal());
        assert_eq!(
            Ended.transition(Active).unwrap_err().to_string(),
            "illegal call status transition ended -> active"
        );
    }

    #[test]
    fn wire_names() {
        for s in ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
            assert_eq!(s.as_str().parse::<CallStatus>().unwrap(), s);
        }
        assert_eq!(
            serde_json::to_string(&CallType::Video).unwrap(),
            r#""video""#
        );
        assert!(serde_json::from_str::<CallType>(r#""Video""#).is_err());
        assert!("ringing".parse::<CallStatus>().is_err());
    }
}
