//! Refusals: 400 for bad queries, 426 without upgrade, and errors for
//! bad frames, each as a JSON body with a code and a message.

use std::time::Duration;

use serde_json::Value;

use crate::support::{user, Gateway};

fn gw() -> &'static Gateway {
    Gateway::shared("single", &[("SHARD_POLICY", "single")])
}

pub fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_queries_are_400() {
    let g = gw();
    let t = g.token(&user("query"), "pro").await;
    for (q, code) in [
        ("clientType=session-scoped", "missing_session_id"),
        ("clientType=machine-scoped", "missing_machine_id"),
        ("clientType=robot", "invalid_client_type"),
        ("clientType=session-scoped&sessionId=a%2Fb", "invalid_id"),
        ("clientType=session-scoped&sessionId=%C3%BC", "invalid_id"),
        ("clientType=machine-scoped&machineId=a%20b", "invalid_id"),
    ] {
        let (status, body) = g.try_connect(&t, q).await.err().expect("refused");
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(error_code(&body), code, "{q}");
    }
    let long = format!("clientType=session-scoped&sessionId={}", "x".repeat(129));
    let (status, _) = g.try_connect(&t, &long).await.err().expect("refused");
    assert_eq!(status, 400);
}

#[tokio::test]
async fn plain_http_on_the_socket_path_is_426() {
    let g = gw();
    let t = g.token(&user("plain"), "pro").await;
    for path in ["/v1/updates", "/v1/websocket"] {
        let r = reqwest::get(format!("{}{path}?token={t}", g.http()))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 426, "{path}");
        assert_eq!(error_code(&r.text().await.unwrap()), "upgrade_required");
    }
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let g = gw();
    let r = reqwest::get(format!("{}/health", g.http())).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["policy"], "single");
    assert!(v["version"].is_string());
    let r = reqwest::get(format!("{}/nope", g.http())).await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(error_code(&r.text().await.unwrap()), "not_found");
}

#[tokio::test]
async fn bad_frames_get_error_events_and_the_socket_stays_open() {
    let g = gw();
    let t = g.token(&user("frames"), "pro").await;
    let mut c = g.connect(&t, "").await;
    // The platform's normalization: code 1002 with its texts, and the socket stays open.
    for (frame, message) in [
        ("not json", "Invalid JSON message"),
        ("[1,2]", "Invalid message format"),
        (r#"{"data":1}"#, "Invalid message format"),
        (r#"{"event":7}"#, "Invalid message format"),
    ] {
        c.send(frame).await;
        let e = c.expect_event("error").await;
        assert_eq!(e["data"]["code"], 1002, "{frame}");
        assert_eq!(e["data"]["message"], message, "{frame}");
        assert!(e["data"]["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    }
    // Unknown events are not errors (they are forwarded by the routing rules), and a
    // client's ack of a server frame is dropped silently.
    c.send(r#"{"event":"dance"}"#).await;
    c.send(r#"{"event":"update","ackId":"a1","ack":{"ok":true}}"#)
        .await;
    c.send(r#"{"type":"ping","payload":{}}"#).await;
    c.expect_event("pong").await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn broadcast_body_errors() {
    let g = gw();
    let t = g.token(&user("body"), "pro").await;
    for (body, status, code) in [
        (
            serde_json::json!({"message": {"payload": 1}}),
            400,
            "invalid_body",
        ),
        (
            serde_json::json!({"message": {"type": "t"}, "filter": {"type": "teleport"}}),
            400,
            "invalid_filter",
        ),
        (
            serde_json::json!({"message": {"type": "t"}, "filter": {"type": "session"}}),
            400,
            "invalid_filter",
        ),
    ] {
        let (s, v) = g.broadcast(&t, &body).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"], code);
    }
    let big = serde_json::json!({"message": {"type": "t", "payload": "x".repeat(70_000)}});
    let (s, v) = g.broadcast(&t, &big).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"], "payload_too_large");
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let g = gw();
    let t = g.token(&user("big"), "pro").await;
    let mut c = g.connect(&t, "").await;
    let data = "x".repeat(70_000);
    c.send(&format!(r#"{{"event":"broadcast","data":"{data}"}}"#))
        .await;
    let e = c.expect_event("error").await;
    assert_eq!(e["data"]["code"], 1009);
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1009));
}

#[tokio::test]
async fn a_flood_of_bad_frames_closes_with_1008() {
    let g = gw();
    let t = g.token(&user("flood"), "pro").await;
    let mut c = g.connect(&t, "").await;
    // Unknown events are forwarded, never counted: a CLI sends session-alive every 2 s.
    for _ in 0..30 {
        c.send(r#"{"event":"session-alive","data":{"sid":"s1"}}"#)
            .await;
    }
    // BAD_FRAME_LIMIT defaults to 10 malformed frames per minute; the 11th closes.
    for _ in 0..11 {
        c.send("{oops").await;
    }
    for _ in 0..10 {
        let e = c.expect_event("error").await;
        assert_eq!(e["data"]["code"], 1002);
        assert_eq!(e["data"]["message"], "Invalid JSON message");
    }
    assert_eq!(c.expect_event("error").await["data"]["code"], 1008);
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1008));
}
