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

/// Sends `chunks` chunks of `size` bytes of a broadcast body to `path` with chunked transfer
/// encoding (no `Content-Length`), without the final chunk unless `finish`, and answers the
/// response head and body read within 10 s (`None`: no answer, the body is still awaited).
async fn chunked_post(
    g: &Gateway,
    path: &str,
    bearer: &str,
    chunks: usize,
    size: usize,
    finish: bool,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", g.port))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let open = r#"{"message":{"type":"t","payload":""#;
    let close = r#""}}"#;
    let mut pieces = vec![open.to_owned()];
    pieces.extend((0..chunks).map(|_| "x".repeat(size)));
    pieces.push(close.to_owned());
    if !finish {
        pieces.pop();
    }
    for p in pieces {
        // The server may answer and close before the client is done sending.
        if s.write_all(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if finish {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&got).contains("}") {
                break;
            }
        }
    })
    .await;
    (read.is_ok() && !got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_before_it_is_read_whole() {
    let g = gw();
    let t = g.token(&user("chunked"), "pro").await;
    // 96 KiB of a body that never ends: past MAX_MESSAGE_BYTES (64 KiB) the answer is 413,
    // though the body is not finished (reading it whole would wait forever).
    for (path, bearer) in [
        ("/v1/websocket/broadcast", t.as_str()),
        ("/v1/backend/publish", crate::support::ADMIN),
    ] {
        let answer = chunked_post(g, path, bearer, 6, 16 * 1024, false)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer while the body was still coming"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("payload_too_large"), "{path}: {answer}");
    }
    // A chunked body within the limit is read as before.
    let answer = chunked_post(g, "/v1/websocket/broadcast", &t, 3, 1024, true)
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn oversized_frames_are_refused_before_they_enter_wasm() {
    let g = Gateway::start(
        "frames-guard",
        &[("SHARD_POLICY", "single"), ("TEST_KNOBS", "on")],
    );
    let u = user("guard");
    let t = g.token(&u, "pro").await;
    let mut sockets = Vec::new();
    for _ in 0..16 {
        sockets.push(g.connect(&t, "").await);
    }
    // The shard takes 2 s over each frame it handles: a frame that entered wasm would be
    // held there meanwhile, 16 of them at once.
    let (s, v) = g
        .post_json(
            "/admin/test/shard",
            crate::support::ADMIN,
            &serde_json::json!({"shard": format!("cm:{u}"), "latencyMs": 2000}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let memory = || async {
        let r = reqwest::Client::new()
            .get(format!("{}/admin/test/memory", g.http()))
            .bearer_auth(crate::support::ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().await.unwrap()["wasmBytes"]
            .as_u64()
            .unwrap()
    };
    let before = memory().await;
    // 300,000 three-byte characters: 900 KB of UTF-8, under the runtime's own 1 MiB limit.
    let frame = format!(
        r#"{{"event":"broadcast","data":"{}"}}"#,
        "€".repeat(300_000)
    );
    futures_util::future::join_all(sockets.iter_mut().map(|c| c.send(&frame))).await;
    let want = format!("frame is {} bytes; MAX_MESSAGE_BYTES is 65536", frame.len());
    for c in sockets.iter_mut() {
        let e = c.expect_event("error").await;
        assert_eq!(e["data"]["code"], 1009, "{e}");
        assert_eq!(e["data"]["message"], want.as_str(), "{e}");
        assert!(e["data"]["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(c.expect_close(Duration::from_secs(10)).await, Some(1009));
    }
    let after = memory().await;
    eprintln!("wasm memory: {before} -> {after} bytes");
    assert!(
        after < before + 4 * 1024 * 1024,
        "wasm memory grew from {before} to {after} bytes: the frames entered wasm"
    );
}
