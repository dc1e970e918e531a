//! Client frames: any text must parse or fail without panicking; a size over the limit is
//! always refused before parsing; a parsed broadcast relays to valid JSON carrying the data.
#![no_main]

use edge_gateway::protocol::{parse_client_frame, relay_frame, ClientFrame, FrameError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limit = 256;
    let parsed = parse_client_frame(text, limit);
    if text.len() > limit {
        assert!(matches!(parsed, Err(FrameError::TooLarge { .. })));
        return;
    }
    if let Ok(ClientFrame::Broadcast(d)) = parsed {
        let out = relay_frame(d, "c1");
        let v: serde_json::Value = serde_json::from_str(&out).expect("relay is JSON");
        let data: serde_json::Value = serde_json::from_str(d.get()).expect("data is JSON");
        assert_eq!(v["data"], data);
        assert_eq!(v["from"], "c1");
    }
});
