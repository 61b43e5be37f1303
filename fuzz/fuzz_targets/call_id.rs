//! CallId parsing: never panics; whatever parses round-trips through both text forms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oracle_calls_proto::CallId;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = CallId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(CallId::from_path_segment(&id.to_path_segment()).as_ref(), Ok(&id));
    }
    if let Ok(id) = CallId::from_path_segment(s) {
        assert_eq!(CallId::parse(id.as_str()).as_ref(), Ok(&id));
    }
});
