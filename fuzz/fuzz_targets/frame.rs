//! The envelope and the routing rules: any text normalizes or is refused without panicking;
//! a parsed frame's fields survive re-rendering verbatim; every routing decision renders
//! valid JSON frames and never addresses a socket by an id the frame did not carry.
#![no_main]

use edge_gateway::protocol::{ClientType, Filter};
use edge_gateway::routing::envelope::{self, Parsed};
use edge_gateway::routing::rules::{self, Action, Sender};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let frame = match envelope::parse(text) {
        Parsed::Frame(f) => f,
        Parsed::ClientAck | Parsed::Invalid(_) => return,
    };
    // The normalized fields are what the text held.
    let v: serde_json::Value = serde_json::from_str(text).expect("a parsed frame is JSON");
    if let Some(d) = frame.data {
        let d: serde_json::Value = serde_json::from_str(d.get()).expect("data is JSON");
        assert!(v.get("data") == Some(&d) || v.get("payload") == Some(&d));
    }
    let sender = Sender {
        connection_id: "c1",
        client_type: ClientType::ALL[usize::from(kind) % 3],
    };
    match rules::route(sender, frame) {
        Action::Deliver(d) => {
            let out: serde_json::Value =
                serde_json::from_str(&d.frame).expect("a delivered frame is JSON");
            assert!(out["event"].is_string());
            match d.filter {
                Filter::Exclude { connection_id } => assert_eq!(connection_id, "c1"),
                Filter::Session { session_id } => {
                    assert_eq!(v["data"]["sessionId"].as_str().or(v["payload"]["sessionId"].as_str()), Some(session_id.as_str()))
                }
                Filter::Machine { machine_id } => {
                    assert_eq!(v["data"]["machineId"].as_str().or(v["payload"]["machineId"].as_str()), Some(machine_id.as_str()))
                }
                _ => {}
            }
        }
        Action::RpcToId { target, .. } => assert!(!target.is_empty() && !target.contains(':')),
        Action::RpcResponse { ack, .. } => {
            let a: serde_json::Value = serde_json::from_str(&ack).expect("an rpc ack is JSON");
            assert!(a.get("ok").is_some());
        }
        Action::Pong | Action::RpcToApps { .. } | Action::Drop(_) => {}
    }
});
