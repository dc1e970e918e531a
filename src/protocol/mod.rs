//! The wire protocol (DESIGN.md §3): the connect query, socket metadata and tags, the frames
//! the edge itself sends, the HTTP broadcast body, the filters and the JSON error body. The
//! client envelope and the routing rules are in `routing`.
//!
//! Everything here is pure: frames are parsed from and rendered to strings, so the parsers
//! are fuzzable and the socket owner stays thin.

pub mod cors;
pub mod ids;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::ids::validate_id;

/// The kind of client behind a socket, from the `clientType` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientType {
    #[serde(rename = "user-scoped")]
    UserScoped,
    #[serde(rename = "session-scoped")]
    SessionScoped,
    #[serde(rename = "machine-scoped")]
    MachineScoped,
}

impl ClientType {
    pub const ALL: [ClientType; 3] = [
        ClientType::UserScoped,
        ClientType::SessionScoped,
        ClientType::MachineScoped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::UserScoped => "user-scoped",
            ClientType::SessionScoped => "session-scoped",
            ClientType::MachineScoped => "machine-scoped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The hibernation tag that selects sockets of this type.
    pub fn tag(self) -> String {
        format!("type:{}", self.as_str())
    }
}

/// An API error: HTTP status, stable code and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// A failure of this edge's own (a runtime call, a serialisation), as 500 `internal`.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(500, "internal", e.to_string())
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// `{"error": code, "message": message}`
    pub fn body(&self) -> String {
        serde_json::json!({"error": self.code, "message": self.message}).to_string()
    }
}

/// A validated connect request, from the upgrade URL's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectQuery {
    pub client_type: ClientType,
    pub session_id: Option<String>,
    pub machine_id: Option<String>,
    /// The app's `correlationId`, when it is a valid id: the same on each of its connects,
    /// so a move the edge starts can hand it what it missed (`routing::moves`).
    pub correlation_id: Option<String>,
}

/// The CLI sends its connect parameters only as headers (platform-protocol.md §8.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderIds<'a> {
    /// `X-Client-Type`
    pub client_type: Option<&'a str>,
    /// `X-Session-Id`
    pub session_id: Option<&'a str>,
    /// `X-Machine-Id`
    pub machine_id: Option<&'a str>,
}

/// The platform's exact texts (its tests match them), kept as our errors' messages.
pub const SESSION_ID_REQUIRED: &str = "Session ID required for session-scoped connections";
pub const MACHINE_ID_REQUIRED: &str = "Machine ID required for machine-scoped connections";

/// Parses the connect parameters: each of `clientType`, `sessionId` and `machineId` from the
/// query, else from its header; an empty value counts as absent. Unknown parameters are
/// ignored so clients can add their own. The React app's `correlationId` is kept when it is a
/// valid id and ignored (never refused) otherwise, as the platform ignores it.
pub fn parse_connect_query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    headers: HeaderIds<'a>,
) -> Result<ConnectQuery, ApiError> {
    let mut client_type = None;
    let mut session_id = None;
    let mut machine_id = None;
    let mut correlation_id = None;
    for (k, v) in pairs {
        match k {
            "clientType" => client_type = Some(v),
            "sessionId" => session_id = Some(v),
            "machineId" => machine_id = Some(v),
            "correlationId" => correlation_id = Some(v),
            _ => {}
        }
    }
    let correlation_id = correlation_id
        .filter(|v| validate_id(v).is_ok())
        .map(str::to_owned);
    let present = |v: Option<&'a str>| v.filter(|v| !v.is_empty());
    let client_type = present(client_type).or(present(headers.client_type));
    let session_id = present(session_id).or(present(headers.session_id));
    let machine_id = present(machine_id).or(present(headers.machine_id));
    let client_type = match client_type {
        None => ClientType::UserScoped,
        Some(v) => ClientType::parse(v).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_client_type",
                format!(
                    "clientType `{}` is not one of user-scoped, session-scoped, machine-scoped",
                    truncate(v, 64)
                ),
            )
        })?,
    };
    let session_id = checked_id("sessionId", session_id)?;
    let machine_id = checked_id("machineId", machine_id)?;
    match client_type {
        ClientType::SessionScoped if session_id.is_none() => Err(ApiError::bad_request(
            "missing_session_id",
            SESSION_ID_REQUIRED,
        )),
        ClientType::MachineScoped if machine_id.is_none() => Err(ApiError::bad_request(
            "missing_machine_id",
            MACHINE_ID_REQUIRED,
        )),
        _ => Ok(ConnectQuery {
            client_type,
            session_id,
            machine_id,
            correlation_id,
        }),
    }
}

fn checked_id(name: &'static str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(v) => validate_id(v).map(|()| Some(v.to_owned())).map_err(|e| {
            ApiError::bad_request("invalid_id", format!("{name} is not a valid id: {e}"))
        }),
    }
}

/// Cuts user input down before echoing it in an error message.
pub fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

// ---------------------------------------------------------------------------
// Socket frames

/// The exact text that the Durable Object answers by auto-response, without waking.
pub const PING_FRAME: &str = r#"{"event":"ping"}"#;

/// Metadata of one socket, kept in its hibernation attachment (<= 2 KiB:
/// ids are at most 128 chars each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketMeta {
    pub connection_id: String,
    pub user_id: String,
    pub client_type: ClientType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// A user-scoped app's `correlationId` (see [`ConnectQuery`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub tier: String,
    pub connected_at: u64,
    /// The credential the socket was opened with, so it ends with it (docs/reliability.md):
    /// the token's revocation hash (lowercase hex SHA-256, the platform's `tokenHash`) and
    /// its expiry in ms. A ticket carries the token it was issued for; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The shard that accepted the socket (set there): an object is not told its own name,
    /// and after a wake with nothing stored its sockets say it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shard: String,
}

impl SocketMeta {
    /// Hibernation tags: type, session, machine and connection, so every
    /// broadcast filter is a tag lookup instead of a scan of attachments.
    pub fn tags(&self) -> Vec<String> {
        let mut tags = vec![self.client_type.tag(), conn_tag(&self.connection_id)];
        if let Some(s) = &self.session_id {
            tags.push(session_tag(s));
        }
        if let Some(m) = &self.machine_id {
            tags.push(machine_tag(m));
        }
        if let Some(h) = &self.token_hash {
            tags.push(token_tag(h));
        }
        tags
    }
}

/// The tag of the sockets opened with one token, by its revocation hash.
pub fn token_tag(hash: &str) -> String {
    format!("tok:{hash}")
}

pub fn session_tag(id: &str) -> String {
    format!("session:{id}")
}
pub fn machine_tag(id: &str) -> String {
    format!("machine:{id}")
}
pub fn conn_tag(id: &str) -> String {
    format!("conn:{id}")
}

#[derive(Serialize)]
struct Out<'a, D: Serialize> {
    event: &'a str,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
}

fn render<D: Serialize>(out: &Out<'_, D>) -> String {
    // Serializing strings, integers and already-valid raw JSON cannot fail.
    serde_json::to_string(out).unwrap_or_default()
}

/// The first frame on every socket.
pub fn connected_frame(
    meta: &SocketMeta,
    shard: &str,
    policy: &str,
    spread: u32,
    now_ms: u64,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Data<'a> {
        connection_id: &'a str,
        user_id: &'a str,
        client_type: ClientType,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        machine_id: Option<&'a str>,
        shard: &'a str,
        policy: &'a str,
        spread: u32,
        timestamp: u64,
    }
    render(&Out {
        event: "connected",
        data: Data {
            connection_id: &meta.connection_id,
            user_id: &meta.user_id,
            client_type: meta.client_type,
            session_id: meta.session_id.as_deref(),
            machine_id: meta.machine_id.as_deref(),
            shard,
            policy,
            spread,
            timestamp: now_ms,
        },
        from: None,
        timestamp: None,
    })
}

pub fn pong_frame(now_ms: u64) -> String {
    format!(r#"{{"event":"pong","data":{{"timestamp":{now_ms}}}}}"#)
}

/// A client broadcast as the other sockets receive it (`from` is ours; clients ignore it).
pub fn relay_frame(data: Option<&RawValue>, from: &str) -> String {
    render(&Out {
        event: "broadcast",
        data,
        from: Some(from),
        timestamp: None,
    })
}

/// The platform's close code after a failed authentication (platform-protocol.md §5.5): its
/// clients reconnect on it, and a revoked or expired credential then fails with 401.
pub const AUTH_FAILED: u16 = 4001;
/// The reason that goes with [`AUTH_FAILED`], as the platform writes it.
pub const AUTH_FAILED_REASON: &str = "Authentication failed";

/// Why the edge ends a socket whose credential no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialEnd {
    /// The token's `exp` passed.
    Expired,
    /// The token's hash appeared in `RevokedToken`.
    Revoked,
    /// An operator (or the platform's backend) ended the socket.
    Disconnected,
}

impl CredentialEnd {
    fn message(self) -> &'static str {
        match self {
            CredentialEnd::Expired => "Invalid authentication token: it expired; sign in again",
            CredentialEnd::Revoked => "Invalid authentication token: it was revoked; sign in again",
            CredentialEnd::Disconnected => "Connection ended by the server; reconnect",
        }
    }
}

/// `{"event":"auth-error","data":{"code":4001,"message":M,"timestamp":T}}`, the platform's
/// auth-error frame, sent before the close when a socket's credential ends.
pub fn auth_error_frame(why: CredentialEnd, now_ms: u64) -> String {
    render(&Out {
        event: "auth-error",
        data: serde_json::json!({"code": AUTH_FAILED, "message": why.message(), "timestamp": now_ms}),
        from: None,
        timestamp: None,
    })
}

pub fn reconnect_frame(reason: &str, retry_after_ms: u64) -> String {
    render(&Out {
        event: "reconnect",
        data: serde_json::json!({"reason": reason, "retryAfterMs": retry_after_ms}),
        from: None,
        timestamp: None,
    })
}

// ---------------------------------------------------------------------------
// HTTP broadcast

/// Which of the caller's sockets a broadcast reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    #[serde(rename = "all")]
    All,
    #[serde(rename = "user-scoped-only")]
    UserScopedOnly,
    #[serde(rename = "session", rename_all = "camelCase")]
    Session { session_id: String },
    #[serde(rename = "machine", rename_all = "camelCase")]
    Machine { machine_id: String },
    #[serde(rename = "exclude", rename_all = "camelCase")]
    Exclude { connection_id: String },
    /// Every user-scoped socket, plus the machine-scoped sockets of `machine_id`.
    #[serde(rename = "machine-scoped-only", rename_all = "camelCase")]
    MachineScopedOnly { machine_id: String },
    /// The session-scoped sockets of `session_id`, plus every user-scoped socket.
    #[serde(rename = "all-interested-in-session", rename_all = "camelCase")]
    AllInterestedInSession { session_id: String },
    /// The edge's own: the user-scoped sockets of one app (`correlationId`), to hand a moved
    /// app what was held for it. Never accepted from a client or an HTTP body.
    #[serde(rename = "app", rename_all = "camelCase")]
    App { correlation_id: String },
}

impl Filter {
    /// Whether this filter selects the socket `m`, as a shard's delivery selects them (by
    /// tag for ids, by type for the scoped halves).
    pub fn selects(&self, m: &SocketMeta) -> bool {
        let user = m.client_type == ClientType::UserScoped;
        match self {
            Filter::All => true,
            Filter::UserScopedOnly => user,
            Filter::Session { session_id } => m.session_id.as_ref() == Some(session_id),
            Filter::Machine { machine_id } => m.machine_id.as_ref() == Some(machine_id),
            Filter::Exclude { connection_id } => m.connection_id != *connection_id,
            Filter::MachineScopedOnly { machine_id } => {
                user || (m.client_type == ClientType::MachineScoped
                    && m.machine_id.as_ref() == Some(machine_id))
            }
            Filter::AllInterestedInSession { session_id } => {
                user || (m.client_type == ClientType::SessionScoped
                    && m.session_id.as_ref() == Some(session_id))
            }
            Filter::App { correlation_id } => {
                user && m.correlation_id.as_ref() == Some(correlation_id)
            }
        }
    }
}

/// What the shards need to deliver a broadcast: the rendered frame and the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub frame: String,
    pub filter: Filter,
}

/// Parses `{"message":{"type","payload","timestamp"?},"filter"?}` into a
/// [`Delivery`]. `now_ms` fills a missing timestamp. Size is checked by the
/// caller (413) before the body is read into memory.
pub fn parse_broadcast_body(body: &[u8], now_ms: u64) -> Result<Delivery, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
    })?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::bad_request("invalid_body", "body must be a JSON object with `message`")
    })?;
    for k in obj.keys() {
        if k != "message" && k != "filter" {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!(
                    "unknown field `{}`; allowed: message, filter",
                    truncate(k, 64)
                ),
            ));
        }
    }
    let msg = obj
        .get("message")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_body",
                "`message` must be an object {\"type\": string, \"payload\": any, \"timestamp\"?: ms}",
            )
        })?;
    let ty = msg
        .get("type")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_body",
                "`message.type` must be a non-empty string of at most 128 bytes",
            )
        })?;
    let payload = msg
        .get("payload")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let timestamp = match msg.get("timestamp") {
        None | Some(serde_json::Value::Null) => now_ms,
        Some(t) => t.as_u64().ok_or_else(|| {
            ApiError::bad_request(
                "invalid_body",
                "`message.timestamp` must be a non-negative integer (epoch ms)",
            )
        })?,
    };
    let filter = match obj.get("filter") {
        None | Some(serde_json::Value::Null) => Filter::All,
        Some(f) => parse_filter(f)?,
    };
    let frame = render(&Out {
        event: ty,
        data: payload,
        from: None,
        timestamp: Some(timestamp),
    });
    Ok(Delivery { frame, filter })
}

/// Parses a filter object (`{"type": ..., "sessionId"?, ...}`), any of the seven.
pub fn parse_filter(f: &serde_json::Value) -> Result<Filter, ApiError> {
    const ALLOWED: &str = "all, user-scoped-only, session (+sessionId), machine (+machineId), exclude (+connectionId), machine-scoped-only (+machineId), all-interested-in-session (+sessionId)";
    let ty = f.get("type").and_then(|t| t.as_str()).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_filter",
            format!("`filter.type` must be a string, one of: {ALLOWED}"),
        )
    })?;
    let id = |field: &'static str| -> Result<String, ApiError> {
        let v = f.get(field).and_then(|v| v.as_str()).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_filter",
                format!("filter type `{ty}` needs a string `{field}`"),
            )
        })?;
        validate_id(v)
            .map_err(|e| ApiError::bad_request("invalid_filter", format!("filter.{field}: {e}")))?;
        Ok(v.to_owned())
    };
    match ty {
        "all" => Ok(Filter::All),
        "user-scoped-only" => Ok(Filter::UserScopedOnly),
        "session" => Ok(Filter::Session {
            session_id: id("sessionId")?,
        }),
        "machine" => Ok(Filter::Machine {
            machine_id: id("machineId")?,
        }),
        "exclude" => Ok(Filter::Exclude {
            connection_id: id("connectionId")?,
        }),
        "machine-scoped-only" => Ok(Filter::MachineScopedOnly {
            machine_id: id("machineId")?,
        }),
        "all-interested-in-session" => Ok(Filter::AllInterestedInSession {
            session_id: id("sessionId")?,
        }),
        other => Err(ApiError::bad_request(
            "invalid_filter",
            format!(
                "unknown filter type `{}`; allowed: {ALLOWED}",
                truncate(other, 64)
            ),
        )),
    }
}

/// `{"success":true,"delivered":N,"shards":K,"failedShards":F}`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastResult {
    pub success: bool,
    pub delivered: u64,
    pub shards: u64,
    pub failed_shards: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&'static str, &'static str)]) -> Result<ConnectQuery, ApiError> {
        parse_connect_query(pairs.iter().copied(), HeaderIds::default())
    }

    #[test]
    fn connect_query_defaults_to_user_scoped() {
        let c = q(&[("token", "x")]).unwrap();
        assert_eq!(c.client_type, ClientType::UserScoped);
        assert_eq!(c.session_id, None);
    }

    #[test]
    fn an_apps_correlation_id_is_kept_when_valid_and_ignored_otherwise() {
        let c = q(&[("correlationId", "app-1.x_2")]).unwrap();
        assert_eq!(c.correlation_id.as_deref(), Some("app-1.x_2"));
        // The platform ignores it: a bad one never refuses the connect.
        let long = "a".repeat(500);
        for bad in ["", "a b", "ü", "a/b", long.as_str()] {
            let pairs = [("correlationId", bad)];
            let c = parse_connect_query(pairs, HeaderIds::default()).unwrap();
            assert_eq!(c.correlation_id, None, "{bad}");
        }
    }

    #[test]
    fn a_filter_selects_the_sockets_a_shard_sends_it_to() {
        let m = |t: ClientType, s: Option<&str>, mid: Option<&str>, c: Option<&str>| SocketMeta {
            connection_id: "c1".into(),
            user_id: "u".into(),
            client_type: t,
            session_id: s.map(Into::into),
            machine_id: mid.map(Into::into),
            correlation_id: c.map(Into::into),
            tier: "pro".into(),
            connected_at: 0,
            token_hash: None,
            expires_at: None,
            shard: String::new(),
        };
        let app = m(ClientType::UserScoped, None, None, Some("a1"));
        let daemon = m(ClientType::MachineScoped, None, Some("m1"), None);
        let cli = m(ClientType::SessionScoped, Some("s1"), None, None);
        let session = |id: &str| Filter::Session {
            session_id: id.into(),
        };
        let only_m1 = Filter::MachineScopedOnly {
            machine_id: "m1".into(),
        };
        let for_s2 = Filter::AllInterestedInSession {
            session_id: "s2".into(),
        };
        let app_a1 = Filter::App {
            correlation_id: "a1".into(),
        };
        let not_c1 = Filter::Exclude {
            connection_id: "c1".into(),
        };
        let cases = [
            (Filter::All, [true, true, true]),
            (Filter::UserScopedOnly, [true, false, false]),
            (session("s1"), [false, false, true]),
            (only_m1, [true, true, false]),
            (for_s2, [true, false, false]),
            (app_a1, [true, false, false]),
            (not_c1, [false, false, false]),
        ];
        for (f, want) in cases {
            let got = [f.selects(&app), f.selects(&daemon), f.selects(&cli)];
            assert_eq!(got, want, "{f:?}");
        }
        let other_app = m(ClientType::UserScoped, None, None, Some("a2"));
        assert!(!Filter::App {
            correlation_id: "a1".into()
        }
        .selects(&other_app));
    }

    #[test]
    fn the_edges_own_app_filter_is_refused_in_a_broadcast_body() {
        let body = br#"{"message":{"type":"t"},"filter":{"type":"app","correlationId":"a1"}}"#;
        let e = parse_broadcast_body(body, 1).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_filter"));
    }

    #[test]
    fn session_scoped_needs_session_id() {
        let e = q(&[("clientType", "session-scoped")]).unwrap_err();
        assert_eq!((e.status, e.code), (400, "missing_session_id"));
        let c = q(&[("clientType", "session-scoped"), ("sessionId", "s1")]).unwrap();
        assert_eq!(c.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn machine_scoped_needs_machine_id() {
        let e = q(&[("clientType", "machine-scoped")]).unwrap_err();
        assert_eq!((e.status, e.code), (400, "missing_machine_id"));
    }

    #[test]
    fn bad_ids_and_types_are_400() {
        let e = q(&[("clientType", "robot")]).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_client_type"));
        for bad in ["a/b", "ü", "a b"] {
            let pairs = [("sessionId", bad)];
            let e = parse_connect_query(pairs, HeaderIds::default()).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_id"), "{bad}");
        }
        let long = "x".repeat(129);
        let e =
            parse_connect_query([("machineId", long.as_str())], HeaderIds::default()).unwrap_err();
        assert_eq!(e.code, "invalid_id");
    }

    #[test]
    fn empty_values_count_as_absent() {
        let c = q(&[("clientType", ""), ("sessionId", "")]).unwrap();
        assert_eq!(c.client_type, ClientType::UserScoped);
        assert_eq!(c.session_id, None);
        let e = q(&[("clientType", "session-scoped"), ("sessionId", "")]).unwrap_err();
        assert_eq!(e.message, SESSION_ID_REQUIRED);
        let e = q(&[("clientType", "machine-scoped")]).unwrap_err();
        assert_eq!(e.message, MACHINE_ID_REQUIRED);
    }

    #[test]
    fn headers_fill_what_the_query_leaves_out() {
        // The CLI: headers only.
        let h = HeaderIds {
            client_type: Some("session-scoped"),
            session_id: Some("s-cli"),
            machine_id: None,
        };
        let c = parse_connect_query([], h).unwrap();
        assert_eq!(c.client_type, ClientType::SessionScoped);
        assert_eq!(c.session_id.as_deref(), Some("s-cli"));
        // The query wins field by field; an empty query value falls back to the header.
        let h = HeaderIds {
            client_type: Some("machine-scoped"),
            session_id: Some("s-h"),
            machine_id: Some("m-h"),
        };
        let c = parse_connect_query([("sessionId", "s-q"), ("clientType", "")], h).unwrap();
        assert_eq!(c.client_type, ClientType::MachineScoped);
        assert_eq!(c.session_id.as_deref(), Some("s-q"));
        assert_eq!(c.machine_id.as_deref(), Some("m-h"));
        // A bad header value is as bad as a bad query value.
        let h = HeaderIds {
            client_type: Some("robot"),
            ..HeaderIds::default()
        };
        assert_eq!(
            parse_connect_query([], h).unwrap_err().code,
            "invalid_client_type"
        );
    }

    #[test]
    fn connected_frame_fields() {
        let meta = SocketMeta {
            connection_id: "c1".into(),
            user_id: "alice".into(),
            client_type: ClientType::SessionScoped,
            session_id: Some("s1".into()),
            machine_id: None,
            correlation_id: None,
            tier: "pro".into(),
            token_hash: None,
            expires_at: None,
            shard: String::new(),
            connected_at: 5,
        };
        let v: serde_json::Value =
            serde_json::from_str(&connected_frame(&meta, "cm:alice", "single", 0, 7)).unwrap();
        assert_eq!(v["event"], "connected");
        assert_eq!(v["data"]["connectionId"], "c1");
        assert_eq!(v["data"]["userId"], "alice");
        assert_eq!(v["data"]["clientType"], "session-scoped");
        assert_eq!(v["data"]["sessionId"], "s1");
        assert!(v["data"].get("machineId").is_none());
        assert_eq!(v["data"]["shard"], "cm:alice");
        assert_eq!(v["data"]["policy"], "single");
        assert_eq!(v["data"]["timestamp"], 7);
        assert_eq!(
            meta.tags(),
            vec!["type:session-scoped", "conn:c1", "session:s1"]
        );
    }

    #[test]
    fn broadcast_body_renders_frame() {
        let d = parse_broadcast_body(
            br#"{"message":{"type":"note","payload":{"k":1},"timestamp":42}}"#,
            9,
        )
        .unwrap();
        assert_eq!(d.filter, Filter::All);
        assert_eq!(d.frame, r#"{"event":"note","data":{"k":1},"timestamp":42}"#);
        let d = parse_broadcast_body(br#"{"message":{"type":"t"}}"#, 9).unwrap();
        assert_eq!(d.frame, r#"{"event":"t","data":null,"timestamp":9}"#);
    }

    #[test]
    fn broadcast_filters() {
        let parse = |f: &str| {
            parse_broadcast_body(
                format!(r#"{{"message":{{"type":"t"}},"filter":{f}}}"#).as_bytes(),
                1,
            )
        };
        assert_eq!(parse(r#"{"type":"all"}"#).unwrap().filter, Filter::All);
        assert_eq!(
            parse(r#"{"type":"user-scoped-only"}"#).unwrap().filter,
            Filter::UserScopedOnly
        );
        assert_eq!(
            parse(r#"{"type":"session","sessionId":"s"}"#)
                .unwrap()
                .filter,
            Filter::Session {
                session_id: "s".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"machine","machineId":"m"}"#)
                .unwrap()
                .filter,
            Filter::Machine {
                machine_id: "m".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"exclude","connectionId":"c"}"#)
                .unwrap()
                .filter,
            Filter::Exclude {
                connection_id: "c".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"machine-scoped-only","machineId":"m"}"#)
                .unwrap()
                .filter,
            Filter::MachineScopedOnly {
                machine_id: "m".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"all-interested-in-session","sessionId":"s"}"#)
                .unwrap()
                .filter,
            Filter::AllInterestedInSession {
                session_id: "s".into()
            }
        );
        for bad in [
            r#"{"type":"nope"}"#,
            r#"{"type":"session"}"#,
            r#"{"type":"machine-scoped-only"}"#,
            r#"{"type":"all-interested-in-session","sessionId":"a b"}"#,
            r#"{"type":"machine","machineId":"a/b"}"#,
            r#"{}"#,
            r#""all""#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_filter"), "{bad}");
        }
    }

    #[test]
    fn broadcast_body_errors() {
        for (body, code) in [
            (&b"{"[..], "invalid_json"),
            (b"[]", "invalid_body"),
            (br#"{"filter":{"type":"all"}}"#, "invalid_body"),
            (br#"{"message":{"payload":1}}"#, "invalid_body"),
            (br#"{"message":{"type":""}}"#, "invalid_body"),
            (
                br#"{"message":{"type":"t","timestamp":-1}}"#,
                "invalid_body",
            ),
            (br#"{"message":{"type":"t"},"extra":1}"#, "invalid_body"),
        ] {
            let e = parse_broadcast_body(body, 1).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (400, code),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_body_shape() {
        let e = ApiError::new(429, "tier_limit", "x").retry_after(3);
        assert_eq!(e.body(), r#"{"error":"tier_limit","message":"x"}"#);
        assert_eq!(e.retry_after_s, Some(3));
    }
}
