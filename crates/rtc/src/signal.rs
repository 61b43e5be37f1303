//! LiveKit signaling: protobuf `SignalRequest`/`SignalResponse` over a WebSocket (`/rtc`, v0).

use futures_util::{SinkExt as _, StreamExt as _};
use livekit_protocol as lk;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use std::collections::HashMap;

use crate::Error;

/// Protocol version we speak (v0 dual peer connection; no packet trailers).
pub(crate) const PROTOCOL_VERSION: u32 = 16;

/// A LiveKit signaling or agent WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a LiveKit WebSocket (`/rtc`, `/agent`) at `url` with `token` in an `Authorization`
/// header. A refused upgrade is [`Error::Refused`] with the HTTP status and body; an
/// unreachable server or bad URL is [`Error::Signal`].
///
/// # Errors
/// As above.
pub async fn open_websocket(url: &str, token: &str) -> Result<Ws, Error> {
    let mut req = url
        .into_client_request()
        .map_err(|e| Error::Signal(format!("bad URL {url}: {e}")))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::Signal("token is not a valid header value".into()))?;
    req.headers_mut().insert("Authorization", auth);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            Err(Error::Refused(format!("HTTP {} {body}", resp.status())))
        }
        Err(e) => Err(Error::Signal(e.to_string())),
    }
}

/// The `/rtc` URL (v0) with our client info; `resume` adds the participant to resume.
fn rtc_url(url: &str, resume: Option<&str>) -> String {
    let base = url.trim_end_matches('/');
    let mut full = format!(
        "{base}/rtc?auto_subscribe=1&adaptive_stream=0&protocol={PROTOCOL_VERSION}&sdk=rust&version={}&os=linux",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(sid) = resume {
        full.push_str(&format!(
            "&reconnect=1&sid={sid}&reconnect_reason={}",
            lk::ReconnectReason::RrSignalDisconnected as i32
        ));
    }
    full
}

/// Opens `/rtc` with the token in an `Authorization` header and waits for the join response.
pub(crate) async fn connect(url: &str, token: &str) -> Result<(Ws, lk::JoinResponse), Error> {
    let mut ws = open_websocket(&rtc_url(url, None), token).await?;
    match recv(&mut ws).await? {
        Some(lk::signal_response::Message::Join(j)) => Ok((ws, j)),
        Some(lk::signal_response::Message::Leave(l)) => Err(Error::Refused(format!(
            "server sent leave (reason {})",
            l.reason
        ))),
        Some(_) => Err(Error::Protocol("first message was not `join`")),
        None => Err(Error::Signal("closed before join".into())),
    }
}

/// Opens a resuming `/rtc` connection for participant `sid` (`reconnect=1`) and waits for the
/// server's `reconnect`. A `leave` instead (the server no longer has the participant) is
/// [`Error::Refused`], as is a refused upgrade; a dropped connection is [`Error::Signal`].
pub(crate) async fn reconnect(
    url: &str,
    token: &str,
    sid: &str,
) -> Result<(Ws, lk::ReconnectResponse), Error> {
    let mut ws = open_websocket(&rtc_url(url, Some(sid)), token).await?;
    match recv(&mut ws).await? {
        Some(lk::signal_response::Message::Reconnect(r)) => Ok((ws, r)),
        Some(lk::signal_response::Message::Leave(l)) => Err(Error::Refused(format!(
            "the server no longer has this participant (leave, reason {})",
            l.reason
        ))),
        Some(_) => Err(Error::Protocol(
            "first message of a resume was not `reconnect`",
        )),
        None => Err(Error::Signal("closed before `reconnect`".into())),
    }
}

/// Sends one request.
pub(crate) async fn send(ws: &mut Ws, msg: lk::signal_request::Message) -> Result<(), Error> {
    let req = lk::SignalRequest { message: Some(msg) };
    ws.send(Message::Binary(req.encode_to_vec().into()))
        .await
        .map_err(|e| Error::Signal(e.to_string()))
}

/// Receives the next response; `None` when the server closed the socket.
pub(crate) async fn recv(ws: &mut Ws) -> Result<Option<lk::signal_response::Message>, Error> {
    loop {
        let Some(frame) = ws.next().await else {
            return Ok(None);
        };
        match frame.map_err(|e| Error::Signal(e.to_string()))? {
            Message::Binary(b) => {
                let resp = lk::SignalResponse::decode(b.as_ref())
                    .map_err(|_| Error::Protocol("undecodable SignalResponse"))?;
                if let Some(m) = resp.message {
                    return Ok(Some(m));
                }
            }
            Message::Close(_) => return Ok(None),
            // Pings are answered by tungstenite; text frames are not used.
            _ => {}
        }
    }
}

/// Parses a trickled `RTCIceCandidateInit` JSON into its `candidate:` line.
pub(crate) fn candidate_line(init_json: &str) -> Option<String> {
    // {"candidate":"candidate:… typ host …","sdpMid":"0",…}: pull out the one string field
    // without a JSON dependency in the hot path.
    let key = "\"candidate\":";
    let start = init_json.find(key)? + key.len();
    let rest = init_json.get(start..)?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The SSRC each audio or video m-line of LiveKit's subscriber offer announces (its first
/// `a=ssrc:` line), by `mid`. LiveKit reuses an m-line for the next track it sends there
/// (e.g. the oracle's agent dispatched again after the first one died), with a new SSRC.
pub(crate) fn announced_ssrcs(sdp: &str) -> HashMap<String, u32> {
    /// One m-line's findings.
    #[derive(Default)]
    struct Section<'a> {
        media: bool,
        mid: Option<&'a str>,
        ssrc: Option<u32>,
    }
    fn flush(s: &Section<'_>, out: &mut HashMap<String, u32>) {
        if let (true, Some(m), Some(n)) = (s.media, s.mid, s.ssrc) {
            out.insert(m.to_owned(), n);
        }
    }
    let mut out = HashMap::new();
    let mut cur = Section::default();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            flush(&cur, &mut out);
            cur = Section {
                media: line.starts_with("m=audio") || line.starts_with("m=video"),
                ..Section::default()
            };
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            cur.mid = Some(m.trim());
        } else if let Some(rest) = line.strip_prefix("a=ssrc:")
            && cur.ssrc.is_none()
        {
            cur.ssrc = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    flush(&cur, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_json_is_read() {
        let line = "candidate:1 1 udp 2130706431 127.0.0.1 17882 typ host";
        assert_eq!(
            candidate_line(&format!(r#"{{"candidate":"{line}","sdpMid":"0"}}"#)).as_deref(),
            Some(line)
        );
        assert_eq!(
            candidate_line(
                r#"{"sdpMid":"0","candidate":"candidate:x \"q\"","usernameFragment":"u"}"#
            )
            .as_deref(),
            Some("candidate:x \"q\"")
        );
        assert_eq!(candidate_line("{}"), None);
        assert_eq!(candidate_line(r#"{"candidate":"unterminated"#), None);
    }

    #[test]
    fn the_ssrc_of_each_media_line_is_read_by_mid() {
        let sdp = "v=0\r\ns=-\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
                   a=ssrc:5 cname:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
                   a=ssrc:3829206880 cname:PA_a|TR_b\r\na=ssrc:3829206880 msid:PA_a|TR_b TR_b\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=ssrc-group:FID 7 8\r\na=ssrc:7 cname:v\r\n\
                   a=ssrc:8 cname:v\r\na=mid:2\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\n\
                   a=inactive\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:x cname:y\r\na=mid:4\r\n";
        let got = announced_ssrcs(sdp);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got.get("1"), Some(&3_829_206_880));
        // The group line names the main SSRC first; the first a=ssrc line is the main one.
        assert_eq!(got.get("2"), Some(&7));
        // No SSRC (inactive), the data channel, an unparsable SSRC: nothing.
        assert!(!got.contains_key("3") && !got.contains_key("0") && !got.contains_key("4"));
        assert!(announced_ssrcs("").is_empty());
    }
}
