//! HTTP broadcast bodies: arbitrary bytes never panic; an accepted body always renders a
//! frame that is valid JSON with `event`, `data` and `timestamp`, and errors are 400s.
#![no_main]

use edge_gateway::protocol::parse_broadcast_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_broadcast_body(data, 42) {
        Ok(d) => {
            let v: serde_json::Value = serde_json::from_str(&d.frame).expect("frame is JSON");
            assert!(v["event"].is_string());
            assert!(v.get("data").is_some());
            assert!(v["timestamp"].is_u64());
        }
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(!e.message.is_empty());
        }
    }
});
