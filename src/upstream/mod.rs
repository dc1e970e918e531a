//! The upstream (docs/upstream.md): the platform's backend, behind a service binding or an
//! HTTPS URL, that handles the business events the edge cannot (they need the platform's
//! database) and hears of sockets and machines coming and going. Pure: what to send, how to
//! sign it, what an answer means, when to retry a hook. The shard objects (the home among them) do
//! the sending.

pub mod backlog;
pub mod hooks;

pub use hooks::SenderInfo;

use std::collections::BTreeSet;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::auth::b64;
use crate::auth::Secret;
use crate::protocol::{self, Delivery, Filter};

/// The service binding's name in `wrangler.toml`.
pub const BINDING: &str = "UPSTREAM_SERVICE";
/// The path requests go to through the binding.
pub const SERVICE_URL: &str = "https://upstream/events";
/// How far an upstream should accept a request's timestamp from its clock.
pub const REPLAY_WINDOW_MS: u64 = 300_000;

/// The platform's business events (platform-protocol.md §6.3), minus the built-in
/// `update-usage-limits`.
pub const DEFAULT_EVENTS: &str = "update-metadata,update-state,session-alive,session-end,message,machine-alive,machine-update-metadata,machine-update-state,artifact-read,artifact-update,artifact-create,artifact-delete,access-key-get,usage-report,request-updates-since,acp-session-update,acp-permission-request,acp-permission-response,acp-session-command,acp-session-list-response";

/// The answer a client gets at once when it asks for an ack on one of the platform's
/// business events that nothing here will answer (no upstream, or the event is outside
/// `UPSTREAM_EVENTS`), in that event's own error shape (platform-protocol.md §6.3), so the
/// client falls back at once instead of after its 10-30 s timeout. `None` for any other
/// event: routing events are answered (or not) by other clients, as on the platform.
pub fn unanswered_ack(event: &str) -> Option<String> {
    let why = format!("`{event}` is not handled here: no upstream serves it");
    let shape = match event {
        "update-metadata"
        | "update-state"
        | "machine-update-metadata"
        | "machine-update-state"
        | "artifact-read"
        | "artifact-update"
        | "artifact-create"
        | "artifact-delete" => serde_json::json!({"result": "error", "message": why}),
        "session-end" | "usage-report" | "request-updates-since" => {
            serde_json::json!({"success": false, "error": why})
        }
        e if DEFAULT_EVENTS.split(',').any(|d| d == e) => {
            serde_json::json!({"ok": false, "error": why})
        }
        _ => return None,
    };
    Some(shape.to_string())
}

/// Where the upstream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    /// The service binding [`BINDING`].
    Service,
    /// A URL checked by [`upstream_url`], in its parsed (normalised) form.
    Url(String),
}

impl Target {
    /// An unencrypted upstream: only ever a loopback host, so only a local run.
    pub fn is_plain_http(&self) -> bool {
        matches!(self, Target::Url(u) if u.starts_with("http://"))
    }
}

/// Why an upstream URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL ({0})")]
    Parse(url::ParseError),
    #[error("not an absolute http(s):// URL")]
    NotAbsolute,
    #[error("scheme `{0}` is neither https nor http")]
    Scheme(String),
    #[error("the URL carries a user or password")]
    Userinfo,
    #[error("plain http to `{0}`, which is not a loopback host")]
    NotLoopback(String),
}

/// Checks an upstream URL: `https://` to any host, plain `http://` only to a loopback host
/// (`localhost`, `127.0.0.0/8`, `[::1]`: a local run), never with a user or password. The
/// host is the one the URL parser finds, the one a fetch would reach: a prefix test would
/// take `http://localhost@evil.tld/` (user `localhost`, host `evil.tld`) for loopback.
/// Returns the URL as parsed, which is what gets fetched.
pub fn upstream_url(text: &str) -> Result<url::Url, UrlError> {
    let url = url::Url::parse(text).map_err(UrlError::Parse)?;
    // `http:host` parses too; a config value should say what it means.
    let scheme_len = url.scheme().len();
    if text.get(scheme_len..scheme_len + 3) != Some("://") {
        return Err(UrlError::NotAbsolute);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Userinfo);
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(url.host()) => Ok(url),
        "http" => Err(UrlError::NotLoopback(
            url.host_str().unwrap_or_default().to_owned(),
        )),
        other => Err(UrlError::Scheme(other.to_owned())),
    }
}

fn is_loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Which events go upstream: exact names and `prefix*` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSet {
    exact: BTreeSet<String>,
    prefixes: Vec<String>,
}

/// Why `UPSTREAM_EVENTS` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventSetError {
    #[error("an empty event name")]
    Empty,
    #[error("`{0}` is not an event name (letters, digits, - _ . :, optionally ending in *)")]
    Name(String),
    #[error("update-usage-limits is built in and cannot go upstream")]
    BuiltIn,
}

/// Why an upstream's answer was refused (the sender hears it in its error ack).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not a JSON object")]
    NotObject,
    #[error("the answer is not {{ack?, deliveries?}}: {0}")]
    Shape(String),
    #[error("deliveries[{0}].frame must be a JSON object")]
    Frame(usize),
    #[error("deliveries[{0}].filter: {1}")]
    Filter(usize, String),
}

impl EventSet {
    pub fn parse(value: &str) -> Result<Self, EventSetError> {
        let mut s = EventSet::default();
        for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let name = e.strip_suffix('*').unwrap_or(e);
            if name.is_empty() && e != "*" {
                return Err(EventSetError::Empty);
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            {
                return Err(EventSetError::Name(protocol::truncate(e, 64)));
            }
            if name == "update-usage-limits" {
                return Err(EventSetError::BuiltIn);
            }
            if e.ends_with('*') {
                s.prefixes.push(name.to_owned());
            } else {
                s.exact.insert(name.to_owned());
            }
        }
        Ok(s)
    }

    pub fn matches(&self, event: &str) -> bool {
        self.label(event).is_some()
    }

    /// The name an event's metrics go under: itself when listed by name, else the pattern
    /// that matched (`artifact-*`), so clients cannot grow the label set.
    pub fn label(&self, event: &str) -> Option<String> {
        if event == "update-usage-limits" {
            return None;
        }
        if self.exact.contains(event) {
            return Some(event.to_owned());
        }
        self.prefixes
            .iter()
            .find(|p| event.starts_with(p.as_str()))
            .map(|p| format!("{p}*"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub target: Target,
    pub events: EventSet,
    pub timeout_ms: u32,
    pub max_in_flight: u32,
    pub hooks: bool,
    /// Per object: how many hooks, and bytes of them, the outbox keeps (`backlog`).
    pub hook_bounds: backlog::Bounds,
    pub secret: Secret,
}

impl UpstreamConfig {
    pub fn enabled(&self) -> bool {
        self.target != Target::Off
    }

    /// Whether `event` is forwarded upstream.
    pub fn handles(&self, event: &str) -> bool {
        self.enabled() && self.events.matches(event)
    }

    /// Whether lifecycle hooks are posted.
    pub fn posts_hooks(&self) -> bool {
        self.enabled() && self.hooks
    }
}

/// A business event waiting for its socket's earlier ones.
pub struct QueuedEvent {
    pub event: String,
    /// Its metrics label (the event, or the `UPSTREAM_EVENTS` pattern it matched).
    pub label: String,
    pub data: Option<Box<RawValue>>,
    pub ack_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRequest<'a> {
    kind: &'static str,
    id: &'a str,
    event: &'a str,
    data: &'a RawValue,
    ack_id: Option<&'a str>,
    sender: &'a SenderInfo,
    timestamp: u64,
}

/// The body of an event request.
pub fn event_request(
    id: &str,
    event: &str,
    data: Option<&RawValue>,
    ack_id: Option<&str>,
    sender: &SenderInfo,
    now_ms: u64,
) -> String {
    let null = RawValue::NULL;
    serde_json::to_string(&EventRequest {
        kind: "event",
        id,
        event,
        data: data.unwrap_or(null),
        ack_id,
        sender,
        timestamp: now_ms,
    })
    // Strings, integers and already-valid raw JSON always serialize.
    .unwrap_or_default()
}

/// What the upstream answered.
#[derive(Debug, Default)]
pub struct Answer {
    /// The ack for the sender, JSON text.
    pub ack: Option<String>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Deserialize)]
struct RawAnswer {
    #[serde(default)]
    ack: Option<Box<RawValue>>,
    #[serde(default)]
    deliveries: Vec<RawDelivery>,
}

#[derive(Deserialize)]
struct RawDelivery {
    /// Kept as sent: delivered without re-encoding.
    frame: Box<RawValue>,
    #[serde(default)]
    filter: Option<serde_json::Value>,
}

/// Reads an answer: `{"ack"?: any, "deliveries"?: [{"frame": object, "filter"?: filter}]}`.
/// Anything else is an error the sender hears about; a bad delivery spoils the whole answer,
/// so a half-understood answer is never half delivered.
pub fn parse_answer(body: &str) -> Result<Answer, AnswerError> {
    // serde would read a struct from an array too.
    if !body.trim_start().starts_with('{') {
        return Err(AnswerError::NotObject);
    }
    let raw: RawAnswer =
        serde_json::from_str(body).map_err(|e| AnswerError::Shape(e.to_string()))?;
    let mut deliveries = Vec::with_capacity(raw.deliveries.len());
    for (i, d) in raw.deliveries.into_iter().enumerate() {
        if !d.frame.get().starts_with('{') {
            return Err(AnswerError::Frame(i));
        }
        let filter = match &d.filter {
            None | Some(serde_json::Value::Null) => Filter::All,
            Some(f) => protocol::parse_filter(f).map_err(|e| AnswerError::Filter(i, e.message))?,
        };
        deliveries.push(Delivery {
            frame: d.frame.get().to_owned(),
            filter,
        });
    }
    Ok(Answer {
        ack: raw
            .ack
            .filter(|a| a.get() != "null")
            .map(|a| a.get().to_owned()),
        deliveries,
    })
}

/// `X-Edge-Signature`: `v1=` and the hex HMAC-SHA256 of `timestamp "." body`.
pub fn sign(secret: &Secret, timestamp_ms: u64, body: &str) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    let mut m = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
    m.update(timestamp_ms.to_string().as_bytes());
    m.update(b".");
    m.update(body.as_bytes());
    Some(format!("v1={}", b64::hex(&m.finalize().into_bytes())))
}

/// Why a forwarded event got no upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Timeout(u32),
    Error(String),
    Busy(u32),
}

impl Failure {
    /// The ack the sender gets: `{"ok":false,"error":...}`.
    pub fn ack(&self) -> String {
        let error = match self {
            Failure::Timeout(ms) => format!("upstream timeout after {ms} ms"),
            Failure::Error(e) => format!("upstream error: {}", protocol::truncate(e, 200)),
            Failure::Busy(n) => {
                format!("upstream busy: {n} calls in flight on this shard; retry")
            }
        };
        serde_json::json!({"ok": false, "error": error}).to_string()
    }

    /// The `result` label of `edge_upstream_requests_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Error(_) => "error",
            Failure::Busy(_) => "busy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientType;

    #[test]
    fn unanswered_business_events_get_their_own_error_shape() {
        let v = |e: &str| -> serde_json::Value {
            serde_json::from_str(&unanswered_ack(e).unwrap()).unwrap()
        };
        assert_eq!(v("update-metadata")["result"], "error");
        assert_eq!(v("artifact-read")["result"], "error");
        assert_eq!(v("request-updates-since")["success"], false);
        assert_eq!(v("usage-report")["success"], false);
        assert_eq!(v("access-key-get")["ok"], false);
        assert_eq!(v("message")["ok"], false);
        assert!(v("session-end")["error"]
            .as_str()
            .unwrap()
            .contains("session-end"));
        // Routing and unknown events are left to the other clients, as on the platform.
        for e in [
            "rpc-call",
            "rpc-request",
            "broadcast",
            "ping",
            "custom-thing",
        ] {
            assert_eq!(unanswered_ack(e), None, "{e}");
        }
    }

    #[test]
    fn upstream_urls_are_checked_on_the_parsed_host() {
        for ok in [
            "https://backend.example/edge",
            "http://127.0.0.1:9/events",
            "http://127.1/events",
            "http://localhost:8788/events",
            "http://[::1]:8788/events",
        ] {
            assert!(upstream_url(ok).is_ok(), "{ok}");
        }
        // What is fetched is the parsed form.
        assert_eq!(
            upstream_url("HTTP://LocalHost:8788/events").map(String::from),
            Ok("http://localhost:8788/events".into())
        );
        for (bad, want) in [
            ("http://localhost@evil.tld/", UrlError::Userinfo),
            ("https://u:p@backend.example/", UrlError::Userinfo),
            (
                "http://127.0.0.1.evil.tld/",
                UrlError::NotLoopback("127.0.0.1.evil.tld".into()),
            ),
            (
                "http://localhost.evil.tld/",
                UrlError::NotLoopback("localhost.evil.tld".into()),
            ),
            (
                "http://[::ffff:127.0.0.1]/",
                UrlError::NotLoopback("[::ffff:7f00:1]".into()),
            ),
            ("http:localhost", UrlError::NotAbsolute),
            ("ftp://x/", UrlError::Scheme("ftp".into())),
        ] {
            assert_eq!(upstream_url(bad), Err(want), "{bad}");
        }
        assert!(matches!(upstream_url("http://"), Err(UrlError::Parse(_))));
        assert!(Target::Url("http://127.0.0.1/".into()).is_plain_http());
        assert!(!Target::Url("https://a.example/".into()).is_plain_http());
        assert!(!Target::Service.is_plain_http());
    }

    #[test]
    fn event_sets() {
        let s = EventSet::parse(DEFAULT_EVENTS).unwrap();
        assert!(s.matches("message") && s.matches("artifact-read"));
        assert!(!s.matches("rpc-call") && !s.matches("update-usage-limits"));
        let s = EventSet::parse("artifact-*, message").unwrap();
        assert!(s.matches("artifact-anything") && s.matches("message"));
        assert_eq!(s.label("artifact-anything").as_deref(), Some("artifact-*"));
        assert_eq!(s.label("message").as_deref(), Some("message"));
        assert!(!s.matches("artifac"));
        assert!(EventSet::parse("*").unwrap().matches("anything"));
        assert!(!EventSet::parse("*").unwrap().matches("update-usage-limits"));
        assert!(EventSet::parse("a b")
            .unwrap_err()
            .to_string()
            .contains("`a b`"));
        assert!(EventSet::parse("update-usage-limits").is_err());
        assert_eq!(EventSet::parse("").unwrap(), EventSet::default());
    }

    fn sender() -> SenderInfo {
        SenderInfo {
            user_id: "u1".into(),
            tier: "pro".into(),
            connection_id: "c1".into(),
            client_type: ClientType::SessionScoped,
            session_id: Some("s1".into()),
            machine_id: None,
            shard: "cm:u1:h0".into(),
        }
    }

    #[test]
    fn requests_carry_the_frame_and_the_sender() {
        let d = RawValue::from_string(r#"{"sid":"s1","n":[1, 2]}"#.into()).unwrap();
        let body = event_request("evt1", "message", Some(&d), Some("a1"), &sender(), 7);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "event");
        assert_eq!(v["event"], "message");
        assert_eq!(v["data"]["n"][1], 2);
        assert_eq!(v["ackId"], "a1");
        assert_eq!(v["sender"]["clientType"], "session-scoped");
        assert_eq!(v["sender"]["machineId"], serde_json::Value::Null);
        assert_eq!(v["timestamp"], 7);
        assert!(body.contains(r#""n":[1, 2]"#), "data verbatim: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&event_request("e", "x", None, None, &sender(), 1)).unwrap();
        assert!(v["data"].is_null() && v["ackId"].is_null());
    }

    #[test]
    fn answers() {
        let a = parse_answer(
            r#"{"ack":{"result":"success","version":2},"deliveries":[{"frame":{"event":"update","data":1},"filter":{"type":"all-interested-in-session","sessionId":"s1"}},{"frame":{"event":"x"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            a.ack.as_deref(),
            Some(r#"{"result":"success","version":2}"#)
        );
        assert_eq!(a.deliveries.len(), 2);
        assert_eq!(a.deliveries[0].frame, r#"{"event":"update","data":1}"#);
        assert_eq!(
            a.deliveries[0].filter,
            Filter::AllInterestedInSession {
                session_id: "s1".into()
            }
        );
        assert_eq!(a.deliveries[1].filter, Filter::All);
        let a = parse_answer("{}").unwrap();
        assert!(a.ack.is_none() && a.deliveries.is_empty());
        assert!(parse_answer(r#"{"ack":null}"#).unwrap().ack.is_none());
        for bad in [
            "nope",
            "[]",
            r#"{"deliveries":[{"frame":"text"}]}"#,
            r#"{"deliveries":[{"frame":{},"filter":{"type":"teleport"}}]}"#,
            r#"{"deliveries":{}}"#,
        ] {
            assert!(parse_answer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signatures_are_hex_hmacs_of_timestamp_dot_body() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",b"1700000000000.{}",hashlib.sha256).hexdigest())'
        let s = sign(&Secret::new("s3cret"), 1_700_000_000_000, "{}").unwrap();
        assert_eq!(
            s,
            "v1=e8eb128e84214464aec85474d15f930c60fb75e2076edab5c557f8f406ab4899"
        );
        assert_eq!(sign(&Secret::default(), 1, "{}"), None);
    }

    #[test]
    fn failure_acks() {
        let v: serde_json::Value = serde_json::from_str(&Failure::Timeout(4000).ack()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "upstream timeout after 4000 ms");
        assert!(Failure::Busy(64).ack().contains("64 calls in flight"));
        assert_eq!(Failure::Error("x".into()).result(), "error");
    }
}
