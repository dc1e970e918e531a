//! The platform's frame envelope (platform-protocol.md §5.1, §5.2): what a client sends,
//! normalized, and the frames the edge renders for it.
//!
//! Inbound, both formats are accepted: the client format `{event, data?, ackId?, ack?}` and
//! the server format `{type, payload?, timestamp, messageId?}`. Values are kept as raw JSON, so
//! a relayed payload is never re-encoded. Pure and fuzzable.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A normalized inbound frame.
#[derive(Debug)]
pub struct Inbound<'a> {
    /// `event` (client format) or `type` (server format).
    pub event: Cow<'a, str>,
    /// `data` or `payload`, raw.
    pub data: Option<&'a RawValue>,
    /// `ackId` or `messageId`, when it is a non-empty string.
    pub ack_id: Option<Cow<'a, str>>,
    /// `ack`, present even when it is `null` (the platform tests `ack !== undefined`).
    pub ack: Option<&'a RawValue>,
}

/// What the envelope makes of a text frame.
#[derive(Debug)]
pub enum Parsed<'a> {
    Frame(Inbound<'a>),
    /// A client's acknowledgement of something the server sent (`ack` and `ackId`, any event
    /// but `rpc-response`): dropped silently, as the platform does.
    ClientAck,
    /// Not JSON, or JSON without a string `event` or `type`: answered with an `error` frame.
    Invalid(Invalid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// `Invalid JSON message`
    Json,
    /// `Invalid message format`
    Format,
}

impl Invalid {
    /// The platform's texts (its clients may show them).
    pub fn message(self) -> &'static str {
        match self {
            Invalid::Json => "Invalid JSON message",
            Invalid::Format => "Invalid message format",
        }
    }
}

/// The platform's `data.code` for frames it cannot read.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Our `data.code` for a frame over `MAX_MESSAGE_BYTES` (the socket is then closed 1009).
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Our `data.code` before a close for too many invalid frames (closed 1008).
pub const POLICY_VIOLATION: u16 = 1008;

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "ackId")]
    ack_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    ack: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "messageId")]
    message_id: Option<&'a RawValue>,
}

/// A field that is present, even as `null` (`Option<&RawValue>` alone reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A raw JSON value that is a string, unescaped.
fn string<'a>(v: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    let v = v?;
    if !v.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'a, str>>(v.get()).ok()
}

/// Normalizes a text frame, in the platform's order.
pub fn parse(text: &str) -> Parsed<'_> {
    // serde reads a struct from an array too (`["event", data]` as event and data): a frame
    // is an object, anything else is refused as the wrong shape.
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return Parsed::Invalid(Invalid::Format);
    }
    // Only objects carry fields; `Raw` would also accept `{}`-less input such as `[]` as an
    // error, so tell "not JSON" from "JSON of the wrong shape" first.
    let raw: Raw<'_> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Parsed::Invalid(Invalid::Format)
        }
        Err(_) => return Parsed::Invalid(Invalid::Json),
    };
    let frame = if let Some(event) = string(raw.event) {
        Inbound {
            event,
            data: raw.data,
            ack_id: string(raw.ack_id).filter(|a| !a.is_empty()),
            ack: raw.ack,
        }
    } else if let Some(event) = string(raw.ty) {
        Inbound {
            event,
            data: raw.payload,
            ack_id: string(raw.message_id).filter(|a| !a.is_empty()),
            ack: None,
        }
    } else {
        return Parsed::Invalid(Invalid::Format);
    };
    if frame.ack.is_some() && frame.ack_id.is_some() && frame.event != "rpc-response" {
        return Parsed::ClientAck;
    }
    Parsed::Frame(frame)
}

/// A string field of a JSON object payload (`data.sessionId`, `data.method`, ...).
pub fn field<'a>(data: Option<&'a RawValue>, name: &str) -> Option<Cow<'a, str>> {
    #[derive(Deserialize)]
    struct Any<'a>(#[serde(borrow)] std::collections::BTreeMap<Cow<'a, str>, &'a RawValue>);
    let v = data?;
    if !v.get().starts_with('{') {
        return None;
    }
    let Any(map) = serde_json::from_str(v.get()).ok()?;
    string(map.get(name).copied())
}

// ---------------------------------------------------------------------------
// Outbound frames

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn raw_or_null(v: Option<&RawValue>) -> &str {
    v.map_or("null", RawValue::get)
}

/// `{"event":E,"data":D,"ackId"?:A}`: a forwarded frame, `data` verbatim.
pub fn forward_frame(event: &str, data: Option<&RawValue>, ack_id: Option<&str>) -> String {
    let mut s = format!(
        r#"{{"event":{},"data":{}"#,
        json_str(event),
        raw_or_null(data)
    );
    if let Some(a) = ack_id {
        s.push_str(r#","ackId":"#);
        s.push_str(&json_str(a));
    }
    s.push('}');
    s
}

/// `{"event":"ack","ackId":A,"ack":V}`, `ack` verbatim (already JSON).
pub fn ack_frame(ack_id: &str, ack_json: &str) -> String {
    format!(
        r#"{{"event":"ack","ackId":{},"ack":{ack_json}}}"#,
        json_str(ack_id)
    )
}

/// An RPC answer as the caller expects it: an object with `ok` passes through unchanged,
/// anything else is wrapped as `{"ok":true,"result":...}` (an absent `ack` gives `{"ok":true}`).
pub fn rpc_ack_value(ack: Option<&RawValue>) -> String {
    #[derive(Deserialize)]
    struct Keys<'a>(#[serde(borrow)] std::collections::BTreeMap<Cow<'a, str>, &'a RawValue>);
    match ack {
        None => r#"{"ok":true}"#.to_owned(),
        Some(v) => {
            let passes = v.get().starts_with('{')
                && serde_json::from_str::<Keys<'_>>(v.get())
                    .is_ok_and(|Keys(m)| m.contains_key("ok"));
            if passes {
                v.get().to_owned()
            } else {
                format!(r#"{{"ok":true,"result":{}}}"#, v.get())
            }
        }
    }
}

/// The immediate answer to a call nobody can take (the platform lets it time out).
pub const RPC_NOT_AVAILABLE: &str = r#"{"ok":false,"error":"RPC method not available"}"#;

/// `{"event":"error","data":{"code":C,"message":M,"timestamp":T}}`
pub fn error_frame(code: u16, message: &str, now_ms: u64) -> String {
    format!(
        r#"{{"event":"error","data":{{"code":{code},"message":{},"timestamp":{now_ms}}}}}"#,
        json_str(message)
    )
}

/// `{"event":"ephemeral","data":D}`
pub fn ephemeral_frame(data: &serde_json::Value) -> String {
    format!(r#"{{"event":"ephemeral","data":{data}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Inbound<'_> {
        match parse(text) {
            Parsed::Frame(f) => f,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn client_format() {
        let f = frame(r#"{"event":"rpc-call","data":{"method":"m1:x"},"ackId":"a1"}"#);
        assert_eq!(f.event, "rpc-call");
        assert_eq!(f.data.unwrap().get(), r#"{"method":"m1:x"}"#);
        assert_eq!(f.ack_id.as_deref(), Some("a1"));
        assert!(f.ack.is_none());
        // Server-format fields are ignored when `event` is there.
        let f = frame(r#"{"event":"e","type":"t","payload":1,"messageId":"m"}"#);
        assert_eq!(f.event, "e");
        assert!(f.data.is_none() && f.ack_id.is_none());
    }

    #[test]
    fn server_format() {
        let f = frame(
            r#"{"type":"session-alive","payload":{"sid":"s"},"timestamp":5,"messageId":"m1","ack":1}"#,
        );
        assert_eq!(f.event, "session-alive");
        assert_eq!(f.data.unwrap().get(), r#"{"sid":"s"}"#);
        assert_eq!(f.ack_id.as_deref(), Some("m1"));
        // `ack` is always undefined in the server format.
        assert!(f.ack.is_none());
    }

    #[test]
    fn invalid_frames_name_json_or_format() {
        assert!(matches!(parse("not json"), Parsed::Invalid(Invalid::Json)));
        assert!(matches!(
            parse(r#"{"event":"#),
            Parsed::Invalid(Invalid::Json)
        ));
        for text in [
            "[1,2]",
            r#"["rpc-call","m:x"]"#,
            "42",
            r#""ping""#,
            "null",
            r#"{"data":1}"#,
            r#"{"event":5}"#,
            r#"{"type":null}"#,
        ] {
            assert!(
                matches!(parse(text), Parsed::Invalid(Invalid::Format)),
                "{text}"
            );
        }
        assert_eq!(Invalid::Json.message(), "Invalid JSON message");
        assert_eq!(Invalid::Format.message(), "Invalid message format");
    }

    #[test]
    fn client_acks_are_dropped_but_rpc_responses_are_not() {
        assert!(matches!(
            parse(r#"{"event":"update","ackId":"a","ack":{"x":1}}"#),
            Parsed::ClientAck
        ));
        // `ack: null` is defined.
        assert!(matches!(
            parse(r#"{"event":"x","ackId":"a","ack":null}"#),
            Parsed::ClientAck
        ));
        let f = frame(r#"{"event":"rpc-response","ackId":"a","ack":"b64"}"#);
        assert_eq!(f.ack.unwrap().get(), r#""b64""#);
        // Without an ackId it is not an ack.
        assert!(matches!(
            parse(r#"{"event":"x","ack":1}"#),
            Parsed::Frame(_)
        ));
    }

    #[test]
    fn escaped_names_and_non_string_ack_ids() {
        let f = frame(r#"{"event":"p\u0069ng","ackId":7}"#);
        assert_eq!(f.event, "ping");
        assert!(f.ack_id.is_none());
        assert!(frame(r#"{"event":"x","ackId":""}"#).ack_id.is_none());
    }

    #[test]
    fn payload_fields() {
        let d = RawValue::from_string(r#"{"sessionId":"s\u00311","n":1}"#.into()).unwrap();
        assert_eq!(field(Some(&d), "sessionId").as_deref(), Some("s11"));
        assert_eq!(field(Some(&d), "n"), None);
        assert_eq!(field(Some(&d), "machineId"), None);
        let arr = RawValue::from_string("[1]".into()).unwrap();
        assert_eq!(field(Some(&arr), "sessionId"), None);
        assert_eq!(field(None, "sessionId"), None);
    }

    #[test]
    fn rendered_frames() {
        let d = RawValue::from_string(r#"{"a":[1, 2]}"#.into()).unwrap();
        assert_eq!(
            forward_frame("session-alive", Some(&d), None),
            r#"{"event":"session-alive","data":{"a":[1, 2]}}"#
        );
        assert_eq!(
            forward_frame("x\"y", None, Some("k")),
            r#"{"event":"x\"y","data":null,"ackId":"k"}"#
        );
        assert_eq!(
            ack_frame("a1", r#"{"ok":true}"#),
            r#"{"event":"ack","ackId":"a1","ack":{"ok":true}}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&error_frame(1002, "Invalid JSON message", 9)).unwrap();
        assert_eq!(v["event"], "error");
        assert_eq!(v["data"]["code"], 1002);
        assert_eq!(v["data"]["timestamp"], 9);
    }

    #[test]
    fn rpc_answers_are_wrapped_unless_they_carry_ok() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        assert_eq!(
            rpc_ack_value(Some(&raw(r#""c2VjcmV0""#))),
            r#"{"ok":true,"result":"c2VjcmV0"}"#
        );
        assert_eq!(
            rpc_ack_value(Some(&raw(r#"{"ok":false,"error":"x"}"#))),
            r#"{"ok":false,"error":"x"}"#
        );
        assert_eq!(
            rpc_ack_value(Some(&raw(r#"{"result":1}"#))),
            r#"{"ok":true,"result":{"result":1}}"#
        );
        assert_eq!(
            rpc_ack_value(Some(&raw("null"))),
            r#"{"ok":true,"result":null}"#
        );
        assert_eq!(rpc_ack_value(None), r#"{"ok":true}"#);
    }
}
