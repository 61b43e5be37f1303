#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::*;
use crate::binding::EphemeralKeyPair;

const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n";

/// MatrixCall's shapes as captured in the research note (§A.2), SDP shortened.
fn matrixcall_events() -> Vec<(&'static str, Value)> {
    vec![
        (
            "m.call.invite",
            json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","capabilities":{"m.call.dtmf":false,"m.call.transferee":false},
            "invitee":"@bob:localhost","lifetime":60000,"offer":{"sdp":SDP,"type":"offer"},
            "party_id":"VHPPTOXURU","sdp_stream_metadata":{"b2c3318f-0b64-4f55-a0b1-0d2b0d7f3b11":{"audio_muted":false,"purpose":"m.usermedia","video_muted":true}},
            "version":"1"}),
        ),
        (
            "m.call.candidates",
            json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","candidates":[
                {"candidate":"candidate:3309730139 1 udp 2122194687 192.0.2.2 47234 typ host generation 0 ufrag vbMB network-id 1","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"vbMB"},
                {"candidate":"candidate:1 1 udp 41885439 127.0.0.1 49163 typ relay raddr 0.0.0.0 rport 0 generation 0 ufrag vbMB","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"vbMB"},
                {"candidate":"candidate:2 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active generation 0 ufrag vbMB network-id 1","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"vbMB"},
                {"candidate":""}],
            "party_id":"VHPPTOXURU","version":"1"}),
        ),
        (
            "m.call.answer",
            json!({"answer":{"sdp":SDP,"type":"answer"},"sdp_stream_metadata":{"s1":{"purpose":"m.usermedia"}},
            "capabilities":{"m.call.dtmf":false,"m.call.transferee":false},
            "version":"1","call_id":"1796406079445Gff4oXja6LgtI0o7","party_id":"TLFONSJIST"}),
        ),
        (
            "m.call.select_answer",
            json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","party_id":"VHPPTOXURU","selected_party_id":"TLFONSJIST","version":"1"}),
        ),
        (
            "m.call.hangup",
            json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","party_id":"VHPPTOXURU","reason":"user_hangup","version":"1"}),
        ),
        (
            "m.call.hangup",
            json!({"call_id":"c","party_id":"P","reason":"replaced","version":"1"}),
        ),
        (
            "m.call.reject",
            json!({"call_id":"c","party_id":"P","version":"1"}),
        ),
        (
            "m.call.negotiate",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":10000,"description":{"type":"offer","sdp":SDP}}),
        ),
        (
            "m.call.sdp_stream_metadata_changed",
            json!({"call_id":"c","party_id":"P","version":"1","sdp_stream_metadata":{"s":{"purpose":"m.usermedia","audio_muted":true}}}),
        ),
    ]
}

#[test]
fn matrixcall_shapes_parse_and_round_trip_exactly() {
    for (ty, content) in matrixcall_events() {
        let ev = CallEvent::parse(ty, &content).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(ev.event_type(), ty);
        assert_eq!(ev.to_content(), content, "{ty} does not round-trip");
    }
}

#[test]
fn matrixcall_details_are_understood() {
    let evs: Vec<CallEvent> = matrixcall_events()
        .into_iter()
        .map(|(t, c)| CallEvent::parse(t, &c).unwrap())
        .collect();
    let CallEvent::Invite(inv) = &evs[0] else {
        panic!()
    };
    assert_eq!(inv.lifetime_ms, 60000);
    assert_eq!(inv.invitee.as_deref(), Some("@bob:localhost"));
    assert!(inv.direct.is_none());
    assert!(inv.extra.contains_key("capabilities"));
    let md = inv.sdp_stream_metadata.as_ref().unwrap();
    let entry = md.values().next().unwrap();
    assert_eq!(entry.purpose, StreamPurpose::UserMedia);
    assert_eq!(entry.video_muted, Some(true));
    let CallEvent::Candidates(c) = &evs[1] else {
        panic!()
    };
    assert_eq!(c.candidates.len(), 4);
    assert_eq!(c.candidates[0].username_fragment.as_deref(), Some("vbMB"));
    assert!(c.candidates[3].is_end_of_candidates());
    let CallEvent::Hangup(h) = &evs[5] else {
        panic!()
    };
    assert_eq!(h.reason, HangupReason::replaced());
}

#[test]
fn versions_follow_the_spec_rule() {
    let base = |v: Value| json!({"call_id":"c","party_id":"P","version":v});
    let ver = |v: Value| CallEvent::parse("m.call.reject", &base(v)).map(|e| e.common().version);
    assert_eq!(ver(json!("1")), Ok(Version::V1));
    assert_eq!(ver(json!(0)), Ok(Version::V0));
    assert_eq!(ver(json!("2")), Ok(Version::V1));
    assert_eq!(ver(json!("experimental.x")), Ok(Version::V1));
    assert_eq!(ver(json!(7)), Ok(Version::V1));
    assert_eq!(ver(json!(true)), Err(SignalError::BadVersionType));
    assert_eq!(ver(json!(1.5)), Err(SignalError::BadVersionType));
    assert_eq!(ver(json!({})), Err(SignalError::BadVersionType));
    assert_eq!(
        CallEvent::parse("m.call.reject", &json!({"call_id":"c","party_id":"P"})),
        Err(SignalError::MissingField("version"))
    );
    // Version 0 writes back as the integer.
    let ev = CallEvent::parse("m.call.reject", &base(json!(0))).unwrap();
    assert_eq!(ev.to_content()["version"], json!(0));
}

#[test]
fn hangup_without_reason_is_user_hangup_and_unknown_reasons_are_kept() {
    let ev = CallEvent::parse(
        "m.call.hangup",
        &json!({"call_id":"c","party_id":"P","version":"1"}),
    )
    .unwrap();
    let CallEvent::Hangup(h) = ev else { panic!() };
    assert_eq!(h.reason, HangupReason::UserHangup);
    for r in [
        "answered_elsewhere",
        "signalling_timeout",
        "transferred",
        "replaced",
    ] {
        assert_eq!(HangupReason::from_wire(r), HangupReason::Custom(r.into()));
        assert_eq!(HangupReason::from_wire(r).as_str(), r);
    }
    for r in [
        "ice_timeout",
        "ice_failed",
        "invite_timeout",
        "user_hangup",
        "user_media_failed",
        "user_busy",
        "unknown_error",
    ] {
        let h = HangupReason::from_wire(r);
        assert!(!matches!(h, HangupReason::Custom(_)), "{r}");
        assert_eq!(h.as_str(), r);
    }
}

#[test]
fn our_extension_round_trips_in_invite_and_answer() {
    let mut rng = StdRng::seed_from_u64(3);
    let kp = EphemeralKeyPair::generate(&mut rng);
    let invite = CallEvent::Invite(Invite {
        common: CallCommon::v1(CallId::parse("c1").unwrap(), PartyId::parse("DEV").unwrap()),
        offer_sdp: SDP.into(),
        lifetime_ms: 60000,
        invitee: Some("@bob:example.org".into()),
        sdp_stream_metadata: None,
        direct: Some(kp.extension()),
        extra: Map::new(),
    });
    let content = invite.to_content();
    let ext = &content[EXTENSION_FIELD];
    assert_eq!(ext["v"], json!(1));
    assert_eq!(ext["dh"].as_str().unwrap().len(), 87);
    assert_eq!(ext["nonce"].as_str().unwrap().len(), 43);
    assert_eq!(CallEvent::parse("m.call.invite", &content).unwrap(), invite);
    let answer = CallEvent::Answer(Answer {
        common: CallCommon::v1(
            CallId::parse("c1").unwrap(),
            PartyId::parse("DEV2").unwrap(),
        ),
        answer_sdp: SDP.into(),
        sdp_stream_metadata: None,
        direct: Some(kp.extension()),
        extra: Map::new(),
    });
    assert_eq!(
        CallEvent::parse("m.call.answer", &answer.to_content()).unwrap(),
        answer
    );
    // Snapshot of the shape (key order of serde_json's map is sorted).
    let keys: Vec<&String> = content.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "call_id",
            "invitee",
            "lifetime",
            "offer",
            "org.oraclecalls.direct.v1",
            "party_id",
            "version"
        ]
    );
}

fn with_ext(ext: Value) -> Value {
    json!({"call_id":"c","party_id":"P","version":"1","lifetime":1000,
           "offer":{"type":"offer","sdp":SDP}, EXTENSION_FIELD: ext})
}

#[test]
fn malformed_extensions_are_refused_with_typed_errors() {
    let mut rng = StdRng::seed_from_u64(4);
    let kp = EphemeralKeyPair::generate(&mut rng);
    let dh = kp.public().to_base64url();
    let nonce = kp.nonce().to_base64url();
    let parse = |ext: Value| CallEvent::parse("m.call.invite", &with_ext(ext)).map(|_| ());
    assert_eq!(parse(json!({"v":1,"dh":dh,"nonce":nonce})), Ok(()));
    let cases: Vec<(Value, SignalError)> = vec![
        (
            json!("x"),
            SignalError::NotAnObject {
                field: EXTENSION_FIELD,
            },
        ),
        (
            json!({"dh":dh,"nonce":nonce}),
            ExtensionError::MissingField("v").into(),
        ),
        (
            json!({"v":2,"dh":dh,"nonce":nonce}),
            ExtensionError::UnsupportedVersion.into(),
        ),
        (
            json!({"v":"1","dh":dh,"nonce":nonce}),
            ExtensionError::UnsupportedVersion.into(),
        ),
        (
            json!({"v":1,"nonce":nonce}),
            ExtensionError::MissingField("dh").into(),
        ),
        (
            json!({"v":1,"dh":dh}),
            ExtensionError::MissingField("nonce").into(),
        ),
        (
            json!({"v":1,"dh":5,"nonce":nonce}),
            ExtensionError::WrongType("dh").into(),
        ),
        (
            json!({"v":1,"dh":format!("{dh}="),"nonce":nonce}),
            ExtensionError::BadBase64("dh").into(),
        ),
        (
            json!({"v":1,"dh":dh.replace('_', "/").replace('-', "+") + "+/","nonce":nonce}),
            ExtensionError::BadBase64("dh").into(),
        ),
        (
            json!({"v":1,"dh":"AAAA","nonce":nonce}),
            ExtensionError::WrongLength {
                field: "dh",
                expected: 65,
                actual: 3,
            }
            .into(),
        ),
        (
            json!({"v":1,"dh":dh,"nonce":"AAAA"}),
            ExtensionError::WrongLength {
                field: "nonce",
                expected: 32,
                actual: 3,
            }
            .into(),
        ),
        (
            json!({"v":1,"dh":"A".repeat(87),"nonce":nonce}),
            ExtensionError::InvalidPublicKey.into(),
        ),
    ];
    for (ext, want) in cases {
        assert_eq!(parse(ext.clone()), Err(want), "{ext}");
    }
}

#[test]
fn malformed_contents_are_refused_with_typed_errors() {
    let cases: Vec<(&str, Value, SignalError)> = vec![
        (
            "m.call.foo",
            json!({"call_id":"c","party_id":"P","version":"1"}),
            SignalError::UnknownEventType("m.call.foo".into()),
        ),
        (
            "m.call.reject",
            json!([]),
            SignalError::NotAnObject { field: "content" },
        ),
        (
            "m.call.reject",
            json!({"party_id":"P","version":"1"}),
            SignalError::MissingField("call_id"),
        ),
        (
            "m.call.reject",
            json!({"call_id":"c","version":"1"}),
            SignalError::MissingField("party_id"),
        ),
        (
            "m.call.reject",
            json!({"call_id":"a b","party_id":"P","version":"1"}),
            SignalError::BadIdentifier("call_id"),
        ),
        (
            "m.call.reject",
            json!({"call_id":"","party_id":"P","version":"1"}),
            SignalError::BadIdentifier("call_id"),
        ),
        (
            "m.call.reject",
            json!({"call_id":"c","party_id":"P\n","version":"1"}),
            SignalError::BadIdentifier("party_id"),
        ),
        (
            "m.call.reject",
            json!({"call_id":5,"party_id":"P","version":"1"}),
            SignalError::WrongType {
                field: "call_id",
                expected: "a string",
            },
        ),
        (
            "m.call.invite",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":1}),
            SignalError::MissingField("offer"),
        ),
        (
            "m.call.invite",
            json!({"call_id":"c","party_id":"P","version":"1","offer":{"type":"offer","sdp":SDP}}),
            SignalError::MissingField("lifetime"),
        ),
        (
            "m.call.invite",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":-1,"offer":{"type":"offer","sdp":SDP}}),
            SignalError::WrongType {
                field: "lifetime",
                expected: "a non-negative integer",
            },
        ),
        (
            "m.call.invite",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"offer":{"type":"answer","sdp":SDP}}),
            SignalError::WrongSdpType {
                field: "offer",
                expected: "offer",
            },
        ),
        (
            "m.call.invite",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"offer":{"type":"offer"}}),
            SignalError::WrongType {
                field: "offer",
                expected: "an object with a string `sdp`",
            },
        ),
        (
            "m.call.invite",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"offer":"sdp"}),
            SignalError::NotAnObject { field: "offer" },
        ),
        (
            "m.call.answer",
            json!({"call_id":"c","party_id":"P","version":"1","answer":{"type":"offer","sdp":SDP}}),
            SignalError::WrongSdpType {
                field: "answer",
                expected: "answer",
            },
        ),
        (
            "m.call.candidates",
            json!({"call_id":"c","party_id":"P","version":"1"}),
            SignalError::MissingField("candidates"),
        ),
        (
            "m.call.candidates",
            json!({"call_id":"c","party_id":"P","version":"1","candidates":{}}),
            SignalError::WrongType {
                field: "candidates",
                expected: "an array",
            },
        ),
        (
            "m.call.candidates",
            json!({"call_id":"c","party_id":"P","version":"1","candidates":[{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}]}),
            SignalError::CandidateWithoutMid { index: 0 },
        ),
        (
            "m.call.candidates",
            json!({"call_id":"c","party_id":"P","version":"1","candidates":[{"sdpMid":"0"}]}),
            SignalError::MissingField("candidate"),
        ),
        (
            "m.call.select_answer",
            json!({"call_id":"c","party_id":"P","version":"1"}),
            SignalError::MissingField("selected_party_id"),
        ),
        (
            "m.call.select_answer",
            json!({"call_id":"c","party_id":"P","version":"1","selected_party_id":""}),
            SignalError::BadIdentifier("selected_party_id"),
        ),
        (
            "m.call.negotiate",
            json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"description":{"type":"pranswer","sdp":SDP}}),
            SignalError::WrongSdpType {
                field: "description",
                expected: "offer` or `answer",
            },
        ),
        (
            "m.call.hangup",
            json!({"call_id":"c","party_id":"P","version":"1","reason":3}),
            SignalError::WrongType {
                field: "reason",
                expected: "a string",
            },
        ),
        (
            "m.call.sdp_stream_metadata_changed",
            json!({"call_id":"c","party_id":"P","version":"1"}),
            SignalError::MissingField("sdp_stream_metadata"),
        ),
        (
            "m.call.sdp_stream_metadata_changed",
            json!({"call_id":"c","party_id":"P","version":"1","sdp_stream_metadata":{"s":{}}}),
            SignalError::MissingField("purpose"),
        ),
        (
            CONFIRM_EVENT_TYPE,
            json!({"call_id":"c","party_id":"P","version":"1","mac":"AAAA"}),
            SignalError::WrongType {
                field: "mac",
                expected: "32 bytes of base64url without padding",
            },
        ),
    ];
    for (ty, content, want) in cases {
        assert_eq!(CallEvent::parse(ty, &content), Err(want), "{ty} {content}");
    }
}

#[test]
fn end_of_candidates_needs_no_mid() {
    let ev = CallEvent::Candidates(Candidates {
        common: CallCommon::v1(CallId::parse("c").unwrap(), PartyId::parse("P").unwrap()),
        candidates: vec![Candidate::end_of_candidates()],
        extra: Map::new(),
    });
    assert_eq!(ev.to_content()["candidates"], json!([{"candidate": ""}]));
    assert_eq!(
        CallEvent::parse("m.call.candidates", &ev.to_content()).unwrap(),
        ev
    );
}

fn arb_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{1,40}"
}

proptest! {
    #[test]
    fn hangups_and_candidates_round_trip(
        call in arb_id(), party in "[A-Z]{1,12}", reason in "[a-z_]{1,20}",
        cands in proptest::collection::vec(("[ -~]{0,60}", proptest::option::of("[0-9]{1,2}"), proptest::option::of(0u32..8), proptest::option::of("[A-Za-z]{4}")), 0..6),
    ) {
        let common = CallCommon::v1(CallId::parse(&call).unwrap(), PartyId::parse(&party).unwrap());
        let h = CallEvent::Hangup(Hangup { common: common.clone(), reason: HangupReason::from_wire(&reason), extra: Map::new() });
        prop_assert_eq!(CallEvent::parse("m.call.hangup", &h.to_content()).unwrap(), h);
        let candidates: Vec<Candidate> = cands.into_iter().map(|(c, mid, idx, u)| {
            let mid = if c.is_empty() || idx.is_some() { mid } else { Some(mid.unwrap_or_else(|| "0".into())) };
            Candidate { candidate: c, sdp_mid: mid, sdp_m_line_index: idx, username_fragment: u }
        }).collect();
        let c = CallEvent::Candidates(Candidates { common, candidates, extra: Map::new() });
        prop_assert_eq!(CallEvent::parse("m.call.candidates", &c.to_content()).unwrap(), c);
    }

    #[test]
    fn parse_never_panics(ty in prop::sample::select(vec!["m.call.invite","m.call.answer","m.call.candidates","m.call.negotiate","m.call.hangup", CONFIRM_EVENT_TYPE]), s in "\\PC{0,200}") {
        if let Ok(v) = serde_json::from_str::<Value>(&s) {
            let _ = CallEvent::parse(ty, &v);
        }
    }
}
