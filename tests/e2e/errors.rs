//! Refusals: 401 for bad tokens, 400 for bad queries, 426 without upgrade, and errors for
//! bad frames, each as a JSON body with a code and a message.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edge_gateway::auth::{mint, Claims};
use serde_json::Value;

use crate::support::{now_s, token, user, Gateway, SECRET};

fn gw() -> &'static Gateway {
    Gateway::shared("single", &[("SHARD_POLICY", "single")])
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let g = gw();
    let u = user("auth");
    let forged = mint(
        &Claims {
            sub: u.clone(),
            tier: "pro".into(),
            exp: now_s() + 60,
        },
        b"not-the-secret-at-all-0123456789",
    );
    let expired = mint(
        &Claims {
            sub: u.clone(),
            tier: "pro".into(),
            exp: now_s() - 1,
        },
        SECRET.as_bytes(),
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{u}","tier":"pro","exp":{}}}"#,
            now_s() + 60
        ))
    );
    let unknown_tier = mint(
        &Claims {
            sub: u.clone(),
            tier: "platinum".into(),
            exp: now_s() + 60,
        },
        SECRET.as_bytes(),
    );
    for (tok, code) in [
        ("", "missing_token"),
        (forged.as_str(), "invalid_token"),
        (expired.as_str(), "token_expired"),
        (none.as_str(), "invalid_token"),
        ("not.a.jwt", "invalid_token"),
        (unknown_tier.as_str(), "unknown_tier"),
    ] {
        let (status, body) = g.try_connect(tok, "").await.err().expect("refused");
        assert_eq!(status, 401, "{tok}: {body}");
        assert_eq!(error_code(&body), code, "{tok}");
        // The same on the HTTP endpoints, via the Authorization header.
        let r = reqwest::Client::new()
            .get(format!("{}/v1/websocket/stats", g.http()))
            .header("authorization", format!("Bearer {tok}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{tok}");
    }
}

#[tokio::test]
async fn bad_queries_are_400() {
    let g = gw();
    let t = token(&user("query"), "pro");
    for (q, code) in [
        ("clientType=session-scoped", "missing_session_id"),
        ("clientType=machine-scoped", "missing_machine_id"),
        ("clientType=robot", "invalid_client_type"),
        ("clientType=session-scoped&sessionId=a%2Fb", "invalid_id"),
        ("clientType=session-scoped&sessionId=%C3%BC", "invalid_id"),
        ("clientType=machine-scoped&machineId=a%20b", "invalid_id"),
        ("sessionId=", "invalid_id"),
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
    let t = token(&user("plain"), "pro");
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
    let t = token(&user("frames"), "pro");
    let mut c = g.connect(&t, "").await;
    for (frame, code) in [
        ("not json", "invalid_json"),
        (r#"{"event":"dance"}"#, "unknown_event"),
        (r#"{"event":"broadcast"}"#, "missing_data"),
    ] {
        c.send(frame).await;
        let e = c.expect_event("error").await;
        assert_eq!(e["data"]["code"], code, "{frame}");
    }
    c.send(r#"{"event":"ping"}"#).await;
    c.expect_event("pong").await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn broadcast_body_errors() {
    let g = gw();
    let t = token(&user("body"), "pro");
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
    let t = token(&user("big"), "pro");
    let mut c = g.connect(&t, "").await;
    let data = "x".repeat(70_000);
    c.send(&format!(r#"{{"event":"broadcast","data":"{data}"}}"#))
        .await;
    let e = c.expect_event("error").await;
    assert_eq!(e["data"]["code"], "frame_too_large");
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1009));
}

#[tokio::test]
async fn a_flood_of_bad_frames_closes_with_1008() {
    let g = gw();
    let t = token(&user("flood"), "pro");
    let mut c = g.connect(&t, "").await;
    // BAD_FRAME_LIMIT defaults to 10 per minute; the 11th closes the socket.
    for _ in 0..11 {
        c.send("{oops").await;
    }
    for _ in 0..10 {
        assert_eq!(
            c.expect_event("error").await["data"]["code"],
            "invalid_json"
        );
    }
    assert_eq!(
        c.expect_event("error").await["data"]["code"],
        "too_many_bad_frames"
    );
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1008));
}
