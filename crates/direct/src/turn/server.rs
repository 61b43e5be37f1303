//! The homeserver's TURN answer: `GET /_matrix/client/v3/voip/turnServer`.
//!
//! Synapse answers `{"username", "password", "uris", "ttl"}` with TURN REST credentials
//! (username `"<expiry unix seconds>:<user id>"`, password base64(HMAC-SHA1(shared secret,
//! username))), or `{}` when no TURN server is configured. Everything in it is untrusted: empty
//! values (element-web#26168) and URIs this client cannot use are typed errors, never panics.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// What is wrong with a `/voip/turnServer` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TurnServerError {
    /// Not a JSON object.
    #[error("the TURN server answer is not a JSON object")]
    NotAnObject,
    /// A required field is missing (the answer is not `{}` either).
    #[error("the TURN server answer has no `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("`{0}` in the TURN server answer has the wrong type")]
    WrongType(&'static str),
    /// A field is empty (an empty username, password or URI list).
    #[error("`{0}` in the TURN server answer is empty")]
    Empty(&'static str),
    /// `ttl` is zero, negative or not an integer.
    #[error("the TURN server answer's ttl is not a positive number of seconds")]
    InvalidTtl,
    /// None of the URIs is one this client uses (`turn:` over UDP); the first reason is given.
    #[error("no usable TURN URI: {0}")]
    NoUsableUri(UriError),
    /// The credentials' own expiry (the username's `<expiry>:` prefix) has passed.
    #[error("the TURN credentials expired at {expiry} (unix seconds)")]
    Expired {
        /// The expiry in the username.
        expiry: u64,
    },
}

/// Why one TURN URI cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// Not `turn:` (e.g. `turns:`, TLS, or `stun:`).
    #[error("unsupported scheme (only turn: is used)")]
    UnsupportedScheme,
    /// A transport other than UDP.
    #[error("unsupported transport (only udp is used)")]
    UnsupportedTransport,
    /// Not `turn:HOST[:PORT][?transport=udp]`.
    #[error("malformed URI")]
    Malformed,
}

/// A usable TURN URI: `turn:HOST[:PORT]?transport=udp` (port 3478 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUri {
    host: String,
    port: u16,
}

impl TurnUri {
    /// Parses one URI (RFC 7065).
    ///
    /// # Errors
    /// [`UriError`] for another scheme or transport, or a malformed URI.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let (scheme, rest) = uri.split_once(':').ok_or(UriError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("turn") {
            return Err(UriError::UnsupportedScheme);
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        if let Some(query) = query {
            match query.split_once('=') {
                Some((key, value)) if key.eq_ignore_ascii_case("transport") => {
                    if !value.eq_ignore_ascii_case("udp") {
                        return Err(UriError::UnsupportedTransport);
                    }
                }
                _ => return Err(UriError::Malformed),
            }
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UriError::Malformed)?;
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| UriError::Malformed)?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(UriError::Malformed),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let valid_host = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        };
        if !valid_host(host) {
            return Err(UriError::Malformed);
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(UriError::Malformed)?,
            None => 3478,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host (a name or an IP literal, without brackets).
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address when the host is an IP literal (a name needs resolving first).
    #[must_use]
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Credentials and servers from `/voip/turnServer`.
pub struct TurnServers {
    username: String,
    password: Zeroizing<String>,
    uris: Vec<TurnUri>,
    ttl: Duration,
}

impl fmt::Debug for TurnServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServers")
            .field("username", &self.username)
            .field("password", &"..")
            .field("uris", &self.uris)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TurnServers {
    /// Parses the body of a `/voip/turnServer` answer. `Ok(None)`: the homeserver has no TURN
    /// server (`{}`). URIs this client cannot use are left out; at least one must remain.
    ///
    /// # Errors
    /// [`TurnServerError`] for a body that is not `{}` and not a complete, usable answer.
    pub fn parse(body: &[u8]) -> Result<Option<Self>, TurnServerError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|_| TurnServerError::NotAnObject)?;
        let Value::Object(map) = value else {
            return Err(TurnServerError::NotAnObject);
        };
        if map.is_empty() {
            return Ok(None);
        }
        let username = non_empty_str(&map, "username")?;
        let password = Zeroizing::new(non_empty_str(&map, "password")?);
        let raw_uris = match map.get("uris") {
            None => return Err(TurnServerError::Missing("uris")),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(TurnServerError::WrongType("uris")),
        };
        if raw_uris.is_empty() {
            return Err(TurnServerError::Empty("uris"));
        }
        let mut uris = Vec::new();
        let mut first_error = None;
        for raw in raw_uris {
            let Value::String(raw) = raw else {
                return Err(TurnServerError::WrongType("uris"));
            };
            match TurnUri::parse(raw) {
                Ok(uri) => uris.push(uri),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if uris.is_empty() {
            return Err(TurnServerError::NoUsableUri(
                first_error.unwrap_or(UriError::Malformed),
            ));
        }
        let ttl = match map.get("ttl") {
            None => return Err(TurnServerError::Missing("ttl")),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|s| *s > 0)
                .ok_or(TurnServerError::InvalidTtl)?,
            Some(_) => return Err(TurnServerError::WrongType("ttl")),
        };
        Ok(Some(Self {
            username,
            password,
            uris,
            ttl: Duration::from_secs(ttl),
        }))
    }

    /// The TURN username (for TURN REST credentials `"<expiry>:<user id>"`).
    #[must_use]
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The TURN password.
    ///
    /// # Security
    /// A credential: hand it to [`TurnAllocation::new`](super::TurnAllocation::new), never log it.
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The usable URIs, in the homeserver's order.
    #[must_use]
    pub fn uris(&self) -> &[TurnUri] {
        &self.uris
    }

    /// How long the credentials are valid, as the homeserver says.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The expiry in a TURN REST username (`"<unix seconds>:..."`), if it has one.
    #[must_use]
    pub fn username_expiry(&self) -> Option<u64> {
        let (expiry, _) = self.username.split_once(':')?;
        expiry.parse().ok()
    }

    /// Checks the username's expiry against the wall clock (`unix_now`, seconds): a new
    /// allocation needs credentials that have not expired (a running one outlives them).
    ///
    /// # Errors
    /// [`TurnServerError::Expired`] when the expiry has passed.
    pub fn check_fresh(&self, unix_now: u64) -> Result<(), TurnServerError> {
        match self.username_expiry() {
            Some(expiry) if expiry <= unix_now => Err(TurnServerError::Expired { expiry }),
            _ => Ok(()),
        }
    }
}

fn non_empty_str(map: &Map<String, Value>, key: &'static str) -> Result<String, TurnServerError> {
    match map.get(key) {
        None => Err(TurnServerError::Missing(key)),
        Some(Value::String(s)) if s.is_empty() => Err(TurnServerError::Empty(key)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(TurnServerError::WrongType(key)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const SYNAPSE: &str = r#"{"username":"1796409033:@carol:localhost","password":"fpyq/x1M=","ttl":3600,"uris":["turn:127.0.0.1:3478?transport=udp"]}"#;

    #[test]
    fn parses_what_synapse_sends() {
        let t = TurnServers::parse(SYNAPSE.as_bytes()).unwrap().unwrap();
        assert_eq!(t.username(), "1796409033:@carol:localhost");
        assert_eq!(t.password(), "fpyq/x1M=");
        assert_eq!(t.ttl(), Duration::from_secs(3600));
        assert_eq!(t.uris().len(), 1);
        assert_eq!(
            t.uris()[0].socket_addr(),
            Some("127.0.0.1:3478".parse().unwrap())
        );
        assert_eq!(t.username_expiry(), Some(1_796_409_033));
        assert_eq!(t.check_fresh(1_796_409_032), Ok(()));
        assert_eq!(
            t.check_fresh(1_796_409_033),
            Err(TurnServerError::Expired {
                expiry: 1_796_409_033
            })
        );
        assert!(
            !format!("{t:?}").contains("fpyq"),
            "the password leaks into Debug"
        );
    }

    #[test]
    fn empty_object_means_no_turn() {
        assert!(TurnServers::parse(b"{}").unwrap().is_none());
    }

    #[test]
    fn malformed_answers_are_typed_errors() {
        let cases: &[(&str, TurnServerError)] = &[
            ("[]", TurnServerError::NotAnObject),
            ("not json", TurnServerError::NotAnObject),
            (
                r#"{"password":"p","uris":["turn:h"],"ttl":1}"#,
                TurnServerError::Missing("username"),
            ),
            (
                r#"{"username":"","password":"p","uris":["turn:h"],"ttl":1}"#,
                TurnServerError::Empty("username"),
            ),
            (
                r#"{"username":"u","password":"","uris":["turn:h"],"ttl":1}"#,
                TurnServerError::Empty("password"),
            ),
            (
                r#"{"username":"u","password":7,"uris":["turn:h"],"ttl":1}"#,
                TurnServerError::WrongType("password"),
            ),
            (
                r#"{"username":"u","password":"p","uris":[],"ttl":1}"#,
                TurnServerError::Empty("uris"),
            ),
            (
                r#"{"username":"u","password":"p","uris":"turn:h","ttl":1}"#,
                TurnServerError::WrongType("uris"),
            ),
            (
                r#"{"username":"u","password":"p","uris":["turn:h"]}"#,
                TurnServerError::Missing("ttl"),
            ),
            (
                r#"{"username":"u","password":"p","uris":["turn:h"],"ttl":0}"#,
                TurnServerError::InvalidTtl,
            ),
            (
                r#"{"username":"u","password":"p","uris":["turn:h"],"ttl":-5}"#,
                TurnServerError::InvalidTtl,
            ),
            (
                r#"{"username":"u","password":"p","uris":["turns:h:5349?transport=tcp"],"ttl":1}"#,
                TurnServerError::NoUsableUri(UriError::UnsupportedScheme),
            ),
            (
                r#"{"username":"u","password":"p","uris":["turn:h:3478?transport=tcp"],"ttl":1}"#,
                TurnServerError::NoUsableUri(UriError::UnsupportedTransport),
            ),
            (
                r#"{"username":"u","password":"p","uris":["turn:h:99999"],"ttl":1}"#,
                TurnServerError::NoUsableUri(UriError::Malformed),
            ),
        ];
        for (body, want) in cases {
            let got = TurnServers::parse(body.as_bytes()).err();
            assert_eq!(got.as_ref(), Some(want), "{body}");
        }
    }

    #[test]
    fn unusable_uris_are_left_out_when_a_usable_one_remains() {
        let body = r#"{"username":"u","password":"p","ttl":60,
            "uris":["turns:t.example:5349?transport=tcp","turn:t.example:3478?transport=tcp",
                    "turn:t.example?transport=udp","turn:[::1]:3479"]}"#;
        let t = TurnServers::parse(body.as_bytes()).unwrap().unwrap();
        let got: Vec<(&str, u16)> = t.uris().iter().map(|u| (u.host(), u.port())).collect();
        assert_eq!(got, [("t.example", 3478), ("::1", 3479)]);
        assert_eq!(t.uris()[0].socket_addr(), None);
        assert_eq!(t.username_expiry(), None);
    }
}
