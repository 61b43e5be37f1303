//! The bits of SDP the peer reads or rewrites itself: the DTLS fingerprint, our msid, and
//! candidate lines as MatrixCall sends them. All input here is untrusted (it came through the
//! other person's client).

use std::fmt;

use str0m::Candidate;
use str0m::net::Protocol;

use super::PeerError;

/// The SHA-256 fingerprint of a DTLS certificate: 32 raw bytes, as the binding key mixes it.
///
/// A fingerprint is public (it travels in the SDP), so it compares with `==`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DtlsFingerprint([u8; 32]);

impl DtlsFingerprint {
    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From str0m's fingerprint; `None` unless it is a 32-byte sha-256 digest.
    pub(super) fn from_str0m(f: &str0m::config::Fingerprint) -> Option<DtlsFingerprint> {
        if !f.hash_func.eq_ignore_ascii_case("sha-256") {
            return None;
        }
        <[u8; 32]>::try_from(f.bytes.as_slice())
            .ok()
            .map(DtlsFingerprint)
    }
}

impl fmt::Display for DtlsFingerprint {
    /// As in SDP: `AB:CD:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DtlsFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DtlsFingerprint(sha-256 {self})")
    }
}

/// The DTLS fingerprint an SDP announces: every `a=fingerprint` line (session or media level)
/// must be `sha-256` and all must agree.
///
/// # Errors
/// [`PeerError::UnsupportedFingerprint`] when there is none, another hash function, a malformed
/// digest, or two that differ.
pub fn fingerprint_of_sdp(sdp: &str) -> Result<DtlsFingerprint, PeerError> {
    let mut found: Option<DtlsFingerprint> = None;
    for line in sdp.lines() {
        let Some(value) = line.trim_end().strip_prefix("a=fingerprint:") else {
            continue;
        };
        let (hash, digest) = value
            .split_once(' ')
            .ok_or(PeerError::UnsupportedFingerprint)?;
        if !hash.eq_ignore_ascii_case("sha-256") {
            return Err(PeerError::UnsupportedFingerprint);
        }
        let fp = parse_digest(digest.trim()).ok_or(PeerError::UnsupportedFingerprint)?;
        match found {
            Some(f) if f != fp => return Err(PeerError::UnsupportedFingerprint),
            _ => found = Some(fp),
        }
    }
    found.ok_or(PeerError::UnsupportedFingerprint)
}

/// `AB:CD:…` (32 colon-separated hex pairs) → bytes.
fn parse_digest(s: &str) -> Option<DtlsFingerprint> {
    let mut out = [0u8; 32];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(DtlsFingerprint(out))
}

/// Rewrites the msid of every audio section of an SDP we send to ours.
///
/// str0m 0.25 copies the offerer's `a=msid` into its answer (and keeps it for later offers);
/// MatrixCall then takes our stream for one of its own and drops it, so the other person hears
/// nothing. `a=msid:` and `a=ssrc:<n> msid:` lines in `m=audio` sections get our ids, and the
/// session's `a=msid-semantic` names our stream instead of the one it replaced.
pub(super) fn rewrite_msid(sdp: &str, stream_id: &str, track_id: &str) -> String {
    let replaced: Vec<&str> = audio_msid_streams(sdp).collect();
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_audio = false;
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let eol = line.get(body.len()..).unwrap_or("\r\n");
        if body.starts_with("m=") {
            in_audio = body.starts_with("m=audio ");
        }
        if let Some(rest) = body.strip_prefix("a=msid-semantic:") {
            let mut tokens: Vec<&str> = rest.split_whitespace().collect();
            for t in tokens.iter_mut().skip(1) {
                if replaced.contains(t) {
                    *t = stream_id;
                }
            }
            tokens.dedup();
            out.push_str(&format!("a=msid-semantic: {}{eol}", tokens.join(" ")));
            continue;
        }
        if in_audio && body.starts_with("a=msid:") {
            out.push_str(&format!("a=msid:{stream_id} {track_id}{eol}"));
            continue;
        }
        if in_audio
            && let Some(rest) = body.strip_prefix("a=ssrc:")
            && let Some((ssrc, attr)) = rest.split_once(' ')
            && attr.starts_with("msid:")
        {
            out.push_str(&format!("a=ssrc:{ssrc} msid:{stream_id} {track_id}{eol}"));
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The `a=msid` stream id of the first audio section of an SDP, if it has one.
pub fn audio_msid_stream(sdp: &str) -> Option<&str> {
    audio_msid_streams(sdp).next()
}

/// The `a=msid` stream ids of the audio sections of an SDP.
fn audio_msid_streams(sdp: &str) -> impl Iterator<Item = &str> {
    let mut in_audio = false;
    sdp.lines().filter_map(move |line| {
        if line.starts_with("m=") {
            in_audio = line.starts_with("m=audio ");
        }
        if !in_audio {
            return None;
        }
        line.strip_prefix("a=msid:")?.split_whitespace().next()
    })
}

/// What [`super::Peer::add_remote_candidate`] did with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCandidate {
    /// A UDP candidate, now paired with ours.
    Added,
    /// The end-of-candidates marker (`""`): nothing to add.
    EndOfCandidates,
    /// A candidate we cannot use (TCP: MatrixCall's `tcptype active … port 9` lines; our
    /// sockets are UDP only).
    Skipped,
}

/// Parses one candidate line as `m.call.candidates` carries it (`candidate:…`, with or
/// without `a=`; `generation`, `ufrag`, `network-id` ignored).
pub(super) fn parse_candidate(line: &str) -> Result<Option<Candidate>, PeerError> {
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    if line.is_empty() {
        return Ok(None);
    }
    let c = Candidate::from_sdp_string(line).map_err(|_| PeerError::BadCandidate)?;
    Ok(Some(c))
}

/// Whether the peer can use a parsed candidate (UDP only).
pub(super) fn usable(c: &Candidate) -> bool {
    c.proto() == Protocol::Udp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const FP: &str = "6C:1F:00:AA:BB:CC:DD:EE:FF:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17";

    #[test]
    fn fingerprint_lines_parse_and_only_sha256_counts() {
        let sdp = format!(
            "v=0\r\na=fingerprint:sha-256 {FP}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 {FP}\r\n"
        );
        let fp = fingerprint_of_sdp(&sdp).unwrap();
        assert_eq!(fp.as_bytes()[0], 0x6c);
        assert_eq!(fp.as_bytes()[31], 0x17);
        assert_eq!(fp.to_string(), FP);
        for bad in [
            "v=0\r\n".to_owned(),
            format!("a=fingerprint:sha-1 {}\r\n", &FP[..59]),
            format!("a=fingerprint:sha-256 {}\r\n", &FP[..92]),
            format!("a=fingerprint:sha-256 {FP}:00\r\n"),
            format!("a=fingerprint:sha-256 {}\r\n", FP.replace("6C", "6G")),
            format!(
                "a=fingerprint:sha-256 {FP}\r\na=fingerprint:sha-256 {}\r\n",
                FP.replace("6C", "6D")
            ),
        ] {
            assert!(
                matches!(
                    fingerprint_of_sdp(&bad),
                    Err(PeerError::UnsupportedFingerprint)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn msid_is_rewritten_in_audio_sections_only() {
        let sdp = "v=0\r\na=msid-semantic: WMS theirs\r\nm=audio 9 x 111\r\na=msid:theirs t1\r\na=ssrc:42 cname:c\r\na=ssrc:42 msid:theirs t1\r\nm=video 9 x 96\r\na=msid:theirs v1\r\n";
        let out = rewrite_msid(sdp, "ours", "track");
        assert_eq!(
            out,
            "v=0\r\na=msid-semantic: WMS ours\r\nm=audio 9 x 111\r\na=msid:ours track\r\na=ssrc:42 cname:c\r\na=ssrc:42 msid:ours track\r\nm=video 9 x 96\r\na=msid:theirs v1\r\n"
        );
        assert_eq!(audio_msid_stream(&out), Some("ours"));
        assert_eq!(audio_msid_stream("v=0\r\n"), None);
    }

    #[test]
    fn matrix_call_candidate_lines() {
        let host = "candidate:3309730139 1 udp 2122194687 192.0.2.2 47234 typ host generation 0 ufrag vbMB network-id 1";
        let c = parse_candidate(host).unwrap().unwrap();
        assert!(usable(&c));
        assert_eq!(c.addr().port(), 47234);
        let a = parse_candidate(&format!("a={host}")).unwrap().unwrap();
        assert_eq!(a.addr(), c.addr());
        let tcp = "candidate:1 1 tcp 1518280447 192.0.2.2 9 typ host tcptype active generation 0 ufrag vbMB network-id 1";
        assert!(!usable(&parse_candidate(tcp).unwrap().unwrap()));
        assert!(parse_candidate("").unwrap().is_none());
        assert!(matches!(
            parse_candidate("candidate:nonsense"),
            Err(PeerError::BadCandidate)
        ));
    }
}
