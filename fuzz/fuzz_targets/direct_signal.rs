//! Matrix VoIP call events of person-to-person calls (`m.call.*` and our key confirmation
//! `org.oraclecalls.call.confirm`) as they arrive decrypted from the other person: the first
//! byte picks the event type, the rest is the content. Never panics; whatever parses writes
//! back a content that parses to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oracle_calls_direct::CallEvent;
use oracle_calls_direct::signal::CONFIRM_EVENT_TYPE;

const TYPES: [&str; 9] = [
    "m.call.invite",
    "m.call.candidates",
    "m.call.answer",
    "m.call.select_answer",
    "m.call.negotiate",
    "m.call.reject",
    "m.call.hangup",
    "m.call.sdp_stream_metadata_changed",
    CONFIRM_EVENT_TYPE,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event_type = TYPES[usize::from(pick) % TYPES.len()];
    assert!(CallEvent::is_call_event_type(event_type));
    let Ok(content) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    if let Ok(ev) = CallEvent::parse(event_type, &content) {
        assert_eq!(ev.event_type(), event_type);
        let again = CallEvent::parse(event_type, &ev.to_content()).expect("re-parses");
        assert_eq!(again, ev);
    }
});
