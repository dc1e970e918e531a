//! The platform's credentials and handshake through the edge (issue 11): its Ed25519 tokens
//! by query and header, revocation from D1, tickets (single use, exact rate limit), the CLI's
//! header-only handshake, operator-set tiers, and CORS for the browser calls.

use std::time::Duration;

use edge_gateway::auth::{b64, ticket, token, MintClaims, TokenKeys};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::errors::error_code;
use crate::support::{now_s, platform_token, user, Gateway, ADMIN, SECRET};

fn gw() -> &'static Gateway {
    Gateway::shared("single", &[("SHARD_POLICY", "single")])
}

fn hash_gw() -> &'static Gateway {
    Gateway::shared("hash4", &[("SHARD_POLICY", "hash:shards=4")])
}

fn keys() -> TokenKeys {
    TokenKeys::derive(SECRET)
}

/// Signs any header and payload with the test key, for claims `mint` never writes.
fn forge(header: &str, payload: &str) -> String {
    use ed25519_dalek::Signer;
    let signed = format!(
        "{}.{}",
        b64::encode(header.as_bytes()),
        b64::encode(payload.as_bytes())
    );
    let sk = ed25519_dalek::SigningKey::from_bytes(&keys().seed());
    format!(
        "{signed}.{}",
        b64::encode(&sk.sign(signed.as_bytes()).to_bytes())
    )
}

async fn get_stats(g: &Gateway, auth: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().get(format!("{}/v1/websocket/stats", g.http()));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post_ticket(g: &Gateway, auth: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/websocket/ticket", g.http()))
        .header("content-type", "application/json");
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

async fn ticket_for(g: &Gateway, token: &str) -> String {
    let r = post_ticket(g, Some(&format!("Bearer {token}"))).await;
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn platform_tokens_connect_by_query_and_by_header_on_both_paths() {
    let g = gw();
    let u = user("plat");
    let t = platform_token(&u);
    let c = g.connect(&t, "").await;
    assert_eq!(c.connected["data"]["userId"], u.as_str());
    assert_eq!(c.connected["data"]["clientType"], "user-scoped");
    // Authorization header only, and the /v1/websocket alias.
    let mut held = vec![c];
    for path in ["/v1/updates", "/v1/websocket"] {
        let c = g
            .try_upgrade(path, &[("Authorization", &format!("Bearer {t}"))])
            .await
            .unwrap();
        assert_eq!(c.connected["data"]["userId"], u.as_str());
        held.push(c);
    }
    // The stats and broadcast endpoints take the same token as a Bearer header.
    let (status, st) = get_stats(g, Some(&format!("Bearer {t}"))).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["totalConnections"], 3);
    assert_eq!(st["tier"], "pro");
}

#[tokio::test]
async fn every_bad_token_is_a_401_with_its_code() {
    let g = gw();
    let u = user("badtok");
    let now = now_s();
    let other = TokenKeys::derive("not-the-platform-secret-0123456789");
    let forged = token::mint(&other, &MintClaims::new(&u, now, 60));
    let expired = token::mint(&keys(), &MintClaims::new(&u, now - 120, 60));
    let ephemeral_issuer = forge(
        r#"{"alg":"EdDSA","typ":"JWT"}"#,
        &format!(
            r#"{{"user":"{u}","iss":"github-happy","exp":{}}}"#,
            now + 60
        ),
    );
    let hs256 = forge(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"user":"{u}","iss":"handy","exp":{}}}"#, now + 60),
    );
    let none = format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none"}"#),
        b64::encode(format!(r#"{{"user":"{u}","iss":"handy"}}"#).as_bytes())
    );
    for (tok, code) in [
        (forged.as_str(), "invalid_token"),
        (expired.as_str(), "token_expired"),
        (ephemeral_issuer.as_str(), "invalid_token"),
        (hs256.as_str(), "invalid_token"),
        (none.as_str(), "invalid_token"),
        ("not.a.jwt", "invalid_token"),
        ("invalid-token", "invalid_token"),
    ] {
        let (status, body) = g.try_connect(tok, "").await.err().expect("refused");
        assert_eq!(status, 401, "{tok}: {body}");
        assert_eq!(error_code(&body), code, "{tok}: {body}");
        // The same through the Authorization header, on the socket and the HTTP endpoints.
        let (status, body) = g
            .try_upgrade(
                "/v1/updates",
                &[("Authorization", &format!("Bearer {tok}"))],
            )
            .await
            .err()
            .expect("refused");
        assert_eq!((status, error_code(&body).as_str()), (401, code), "{tok}");
        let (status, body) = get_stats(g, Some(&format!("Bearer {tok}"))).await;
        assert_eq!((status, body["error"].as_str()), (401, Some(code)), "{tok}");
    }
    // No credential at all: the platform's texts stay readable in the message.
    let (status, body) = g.try_upgrade("/v1/updates", &[]).await.err().unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "missing_credentials")
    );
    assert!(
        body.contains("Missing authentication (provide ticket or token)"),
        "{body}"
    );
    let (status, body) = get_stats(g, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing_authorization");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("Missing authorization header"));
    let r = post_ticket(g, Some("Basic abc")).await;
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn a_token_without_exp_is_accepted_as_the_platform_does() {
    let g = gw();
    let u = user("noexp");
    let mut c = MintClaims::new(&u, now_s(), 0);
    c.exp = None;
    let t = token::mint(&keys(), &c);
    let s = g.connect(&t, "").await;
    assert_eq!(s.connected["data"]["userId"], u.as_str());
}

#[tokio::test]
async fn a_revoked_token_is_refused() {
    let g = hash_gw();
    let u = user("revoked");
    // Minted at a distinct iat so no earlier request has cached this exact token.
    let t = token::mint(&keys(), &MintClaims::new(&u, now_s() - 7, 3600));
    let hash = token::revocation_hash(&t);
    g.d1(&format!(
        "INSERT INTO RevokedToken (id, tokenHash, userId, reason, revokedAt, expiresAt) VALUES ('r-{u}', '{hash}', '{u}', 'test', 0, 99999999999999)"
    ));
    let (status, body) = g.try_connect(&t, "").await.err().expect("refused");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "token_revoked"),
        "{body}"
    );
    let (status, body) = get_stats(g, Some(&format!("Bearer {t}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_revoked"))
    );
    // The same user's other tokens still work: revocation is per token.
    g.connect(&platform_token(&u), "").await;
    let health: Value = reqwest::get(format!("{}/health", g.http()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["revocation"], "d1");
}

#[tokio::test]
async fn tickets_connect_once_on_both_paths_and_win_over_any_token() {
    let g = hash_gw();
    let u = user("tick");
    let t = platform_token(&u);
    let a = ticket_for(g, &t).await;
    let b = ticket_for(g, &t).await;
    // The platform's test: a dot, no `+`, `/` or `=`, and different every time.
    assert!(a.contains('.') && !a.contains(['+', '/', '=']), "{a}");
    assert_ne!(a, b);
    for (path, tk) in [("/v1/updates", &a), ("/v1/websocket", &b)] {
        let c = g
            .try_upgrade(
                &format!("{path}?ticket={tk}&clientType=session-scoped&sessionId=s1"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(c.connected["data"]["userId"], u.as_str());
        assert_eq!(c.connected["data"]["sessionId"], "s1");
        // A replay within the window is refused: tickets are single-use here.
        let (status, body) = g
            .try_upgrade(&format!("{path}?ticket={tk}"), &[])
            .await
            .err()
            .expect("replay refused");
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "ticket_replayed"),
            "{body}"
        );
    }
    // A valid ticket with an invalid token: the ticket wins.
    let c = ticket_for(g, &t).await;
    g.try_upgrade(&format!("/v1/updates?ticket={c}&token=invalid-token"), &[])
        .await
        .unwrap();
    // An invalid ticket with a valid token: no fallback.
    let (status, body) = g
        .try_upgrade(
            &format!("/v1/updates?ticket=not-a-valid-ticket&token={t}"),
            &[],
        )
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "invalid_ticket")
    );
    assert!(body.contains("Invalid or expired ticket"), "{body}");
}

#[tokio::test]
async fn bad_tickets_are_401() {
    let g = gw();
    let u = user("badtick");
    let now_ms = now_s() * 1000;
    // Minted by "the platform's server" (the same format) with another secret, and one
    // whose 30 s + 5 s window has passed.
    let foreign = ticket::mint(b"another-platform-secret-000000000", &u, now_ms, "n-1");
    let expired = ticket::mint(SECRET.as_bytes(), &u, now_ms - 36_000, "n-2");
    for tk in [
        foreign.as_str(),
        expired.as_str(),
        "not-a-valid-ticket",
        "missing.dot",
        ".empty-payload",
        "empty-signature.",
        "..double-dots",
    ] {
        let (status, body) = g
            .try_upgrade(&format!("/v1/updates?ticket={tk}"), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "invalid_ticket"),
            "{tk}"
        );
    }
    // A ticket minted the platform's way with the right secret is accepted: cutover works
    // in both directions because the format is byte for byte the platform's.
    let theirs = ticket::mint(SECRET.as_bytes(), &u, now_ms, &ticket::uuid_v4([7; 16]));
    g.try_upgrade(&format!("/v1/updates?ticket={theirs}"), &[])
        .await
        .unwrap();
}

/// Waits until at least `margin` is left in the current minute, so a burst lands in one
/// rate-limit bucket.
async fn away_from_a_minute_boundary(margin: Duration) {
    let ms = (now_s() * 1000) % 60_000;
    let left = 60_000 - ms;
    if left < margin.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(left + 200)).await;
    }
}

#[tokio::test]
async fn the_ticket_rate_limit_is_exact_under_racing_requests() {
    let g = gw();
    let (u, v) = (user("rate"), user("rate-other"));
    let (t, tv) = (platform_token(&u), platform_token(&v));
    away_from_a_minute_boundary(Duration::from_secs(8)).await;
    let auth = format!("Bearer {t}");
    let answers = join_all((0..20).map(|_| post_ticket(g, Some(&auth)))).await;
    let mut ok = 0;
    let mut limited = 0;
    for r in answers {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let h = |n: &str| {
                    r.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let retry: u64 = h("retry-after").parse().unwrap();
                assert!((1..=60).contains(&retry), "{retry}");
                assert_eq!(h("x-ratelimit-limit"), "10");
                assert_eq!(h("x-ratelimit-remaining"), "0");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["retryAfter"].as_u64(), Some(retry));
                assert!(body["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Rate limit exceeded"));
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // Exactly ten, not "about ten" (the platform's KV read-then-write grants all 20).
    assert_eq!((ok, limited), (10, 10));
    // Another user is not limited by the first user's requests.
    assert_eq!(
        post_ticket(g, Some(&format!("Bearer {tv}")))
            .await
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn racing_replays_of_one_ticket_admit_exactly_one_socket() {
    let g = hash_gw();
    let u = user("race-tick");
    let tk = ticket_for(g, &platform_token(&u)).await;
    let path = format!("/v1/updates?ticket={tk}");
    let tries = join_all((0..10).map(|_| g.try_upgrade(&path, &[]))).await;
    let admitted = tries.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 1);
    for e in tries.into_iter().filter_map(Result::err) {
        assert_eq!((e.0, error_code(&e.1).as_str()), (401, "ticket_replayed"));
    }
}

#[tokio::test]
async fn the_cli_handshake_by_headers_is_honoured() {
    let g = hash_gw();
    let u = user("cli");
    let t = platform_token(&u);
    let bearer = format!("Bearer {t}");
    // The session process and the daemon: no query string at all.
    let s = g
        .try_upgrade(
            "/v1/updates",
            &[
                ("Authorization", &bearer),
                ("X-Client-Type", "session-scoped"),
                ("X-Session-Id", "sess-cli"),
                ("X-Correlation-ID", "c-1"),
            ],
        )
        .await
        .unwrap();
    let d = &s.connected["data"];
    assert_eq!(d["clientType"], "session-scoped");
    assert_eq!(d["sessionId"], "sess-cli");
    let m = g
        .try_upgrade(
            "/v1/updates",
            &[
                ("Authorization", &bearer),
                ("X-Client-Type", "machine-scoped"),
                ("X-Machine-Id", "mach-cli"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(m.connected["data"]["clientType"], "machine-scoped");
    assert_eq!(m.connected["data"]["machineId"], "mach-cli");
    // Counted as what they are, not as user-scoped (the platform's P1 bug).
    let st = g.stats(&t).await;
    assert_eq!(st["byType"]["session-scoped"], 1);
    assert_eq!(st["byType"]["machine-scoped"], 1);
    assert_eq!(st["activeSessions"], 1);
    assert_eq!(st["activeMachines"], 1);
    // The query wins field by field.
    let q = g
        .try_upgrade(
            "/v1/updates?sessionId=from-query",
            &[
                ("Authorization", &bearer),
                ("X-Client-Type", "session-scoped"),
                ("X-Session-Id", "from-header"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(q.connected["data"]["sessionId"], "from-query");
    // A missing id is the platform's exact 400 text.
    for (ty, code, text) in [
        (
            "session-scoped",
            "missing_session_id",
            "Session ID required for session-scoped connections",
        ),
        (
            "machine-scoped",
            "missing_machine_id",
            "Machine ID required for machine-scoped connections",
        ),
    ] {
        let (status, body) = g
            .try_upgrade(
                "/v1/updates",
                &[("Authorization", &bearer), ("X-Client-Type", ty)],
            )
            .await
            .err()
            .unwrap();
        assert_eq!((status, error_code(&body).as_str()), (400, code));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["message"], text);
    }
    let (status, body) = g
        .try_upgrade(
            "/v1/updates",
            &[
                ("Authorization", &bearer),
                ("X-Client-Type", "invalid-type"),
            ],
        )
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_client_type")
    );
}

#[tokio::test]
async fn the_operators_tier_applies_to_the_next_connect_across_shards() {
    let g = hash_gw();
    let u = user("tiers");
    let t = platform_token(&u);
    // Default tier (pro, 100): spread three sockets over the four shards.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(g.connect(&t, "").await);
    }
    assert_eq!(g.stats(&t).await["tier"], "pro");
    // Lower it to tiny (5): every shard's spare leased slots go back, so exactly two more fit.
    let v = g.set_tier(&u, Some("tiny")).await;
    assert_eq!(
        (v["tier"].as_str(), v["limit"].as_u64()),
        (Some("tiny"), Some(5))
    );
    for _ in 0..2 {
        held.push(g.connect(&t, "").await);
    }
    for _ in 0..3 {
        let (status, body) = g.try_connect(&t, "").await.err().expect("over the limit");
        assert_eq!(
            (status, error_code(&body).as_str()),
            (429, "tier_limit"),
            "{body}"
        );
        assert!(body.contains("tiny"), "{body}");
    }
    let st = g.stats(&t).await;
    assert_eq!(
        (st["tier"].as_str(), st["limit"].as_u64()),
        (Some("tiny"), Some(5))
    );
    assert_eq!(st["totalConnections"], 5);
    // Raise it: the next connect is admitted, no redeploy.
    g.set_tier(&u, Some("load")).await;
    held.push(g.connect(&t, "").await);
    // Clear it: back to the default tier.
    let v = g.set_tier(&u, None).await;
    assert_eq!(
        (v["tier"].as_str(), v["override"].as_str()),
        (Some("pro"), None)
    );
    // Admin only, and only configured tiers.
    let url = format!("{}/admin/users/{u}/tier", g.http());
    let c = reqwest::Client::new();
    let r = c
        .put(&url)
        .bearer_auth(&t)
        .json(&json!({"tier":"load"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .put(&url)
        .bearer_auth(ADMIN)
        .json(&json!({"tier":"platinum"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(error_code(&r.text().await.unwrap()), "unknown_tier");
    let r = c.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tier"], "pro");
}

fn cors_gw() -> &'static Gateway {
    Gateway::shared(
        "cors",
        &[(
            "CORS_ORIGINS",
            "localhost,https://happy.app,https://www.happy.app",
        )],
    )
}

#[tokio::test]
async fn browser_calls_get_cors_and_preflights_are_answered() {
    let g = cors_gw();
    let t = platform_token(&user("cors"));
    let c = reqwest::Client::new();
    for path in [
        "/v1/websocket/ticket",
        "/v1/websocket/stats",
        "/v1/websocket/broadcast",
    ] {
        let r = c
            .request(reqwest::Method::OPTIONS, format!("{}{path}", g.http()))
            .header("origin", "https://happy.app")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "{path}");
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(h("access-control-allow-origin"), "https://happy.app");
        assert_eq!(h("access-control-allow-credentials"), "true");
        assert!(h("access-control-allow-headers").contains("Authorization"));
        assert!(h("access-control-allow-methods").contains("POST"));
        assert_eq!(h("access-control-max-age"), "86400");
    }
    // The real call from an allowed origin carries the headers too; a local dev origin is
    // echoed; an origin not on the list gets none (the browser blocks it).
    for (origin, allowed) in [
        ("https://happy.app", true),
        ("http://localhost:8081", true),
        ("https://evil.example", false),
    ] {
        let r = c
            .post(format!("{}/v1/websocket/ticket", g.http()))
            .header("origin", origin)
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let acao = r
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(acao.as_deref(), allowed.then_some(origin), "{origin}");
        if allowed {
            let exposed = r.headers()["access-control-expose-headers"]
                .to_str()
                .unwrap();
            assert!(exposed.contains("X-RateLimit-Limit"), "{exposed}");
        }
    }
    // No Origin header (curl, the CLI): `*`.
    let r = c
        .get(format!("{}/v1/websocket/stats", g.http()))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

/// Percent-encodes the characters a query value cannot carry as themselves (`+` would
/// arrive as a space), so the gateway sees exactly `t`.
fn query_value(t: &str) -> String {
    t.replace('%', "%25")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// Other spellings of `t` that a lenient base64url decoder reads as the same bytes: padded,
/// the standard alphabet in the signature, and a non-zero trailing bit in the signature's
/// last character (86 characters carry 516 bits for 512).
fn respellings(t: &str) -> Vec<(&'static str, String)> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (signed, sig) = t.rsplit_once('.').unwrap();
    let mut out = vec![("T=", format!("{t}=")), ("T==", format!("{t}=="))];
    if let Some(i) = sig.find('-') {
        let mut s = sig.to_owned();
        s.replace_range(i..=i, "+");
        out.push(("- as +", format!("{signed}.{s}")));
    }
    if let Some(i) = sig.find('_') {
        let mut s = sig.to_owned();
        s.replace_range(i..=i, "/");
        out.push(("_ as /", format!("{signed}.{s}")));
    }
    let last = sig.as_bytes()[sig.len() - 1];
    let v = ALPHABET.iter().position(|&c| c == last).unwrap();
    assert_eq!(v & 0x0f, 0, "a canonical signature ends in zero bits");
    let mut s = sig[..sig.len() - 1].to_owned();
    s.push(ALPHABET[v | 1] as char);
    out.push(("trailing bit", format!("{signed}.{s}")));
    out
}

/// A fresh token for `u` whose signature has both a `-` and a `_` to re-spell.
fn token_with_both_url_characters(u: &str, offset: u64) -> String {
    (0..500)
        .map(|k| token::mint(&keys(), &MintClaims::new(u, now_s() - offset - k, 3600)))
        .find(|t| {
            let sig = t.rsplit_once('.').unwrap().1;
            sig.contains('-') && sig.contains('_')
        })
        .expect("a signature with - and _ within 500 tries")
}

#[tokio::test]
async fn a_revoked_token_spelled_differently_is_still_refused() {
    // Not `hash_gw`: two `wrangler d1 execute` on one local database at once can fail
    // with SQLITE_BUSY, and `a_revoked_token_is_refused` writes there.
    let g = gw();
    let u = user("respelled");
    // A distinct iat range so no earlier request cached any of these exact strings.
    let t = token_with_both_url_characters(&u, 1_000);
    let hash = token::revocation_hash(&t);
    g.d1(&format!(
        "INSERT INTO RevokedToken (id, tokenHash, userId, reason, revokedAt, expiresAt) VALUES ('r-{u}', '{hash}', '{u}', 'test', 0, 99999999999999)"
    ));
    let variants = respellings(&t);
    assert_eq!(variants.len(), 5);
    let mut accepted = Vec::new();
    for (what, v) in &variants {
        let (status, body) = get_stats(g, Some(&format!("Bearer {v}"))).await;
        if status != 401 {
            accepted.push(format!("stats {what}: {status} {body}"));
        }
        let q = format!("/v1/updates?token={}", query_value(v));
        match g.try_upgrade(&q, &[]).await {
            Ok(c) => accepted.push(format!("upgrade ?token= {what}: {}", c.connected)),
            Err((status, body)) if status != 401 => {
                accepted.push(format!("upgrade ?token= {what}: {status} {body}"))
            }
            Err(_) => {}
        }
        let bearer = format!("Bearer {v}");
        match g
            .try_upgrade("/v1/updates", &[("Authorization", &bearer)])
            .await
        {
            Ok(c) => accepted.push(format!("upgrade Bearer {what}: {}", c.connected)),
            Err((status, body)) if status != 401 => {
                accepted.push(format!("upgrade Bearer {what}: {status} {body}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        accepted.is_empty(),
        "revoked token accepted as {accepted:#?}"
    );
    // The canonical spelling is refused as revoked, as before.
    let (status, body) = get_stats(g, Some(&format!("Bearer {t}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_revoked"))
    );
}

/// A cached token rides another token's revocation query once its last check is half the
/// bound old: revoked meanwhile, it is refused from that query on, not only at its own 60 s
/// recheck (auth::cache::TokenCache::riders).
#[tokio::test]
async fn a_revoked_cached_token_is_refused_once_another_tokens_query_carries_it() {
    // A gateway of its own: a `wrangler d1 execute` on a local database can make the
    // running gateway's concurrent D1 reads fail (503 `revocation_unavailable`), and
    // `a_revoked_token_is_refused` reads and writes `hash_gw`'s at the same moment.
    let g = Gateway::shared("riders", &[("SHARD_POLICY", "hash:shards=4")]);
    let started = std::time::Instant::now();
    let (a_user, b_user) = (user("rider-a"), user("rider-b"));
    // Distinct iats: no earlier request cached either token.
    let a = token::mint(&keys(), &MintClaims::new(&a_user, now_s() - 11, 3600));
    let b = token::mint(&keys(), &MintClaims::new(&b_user, now_s() - 13, 3600));
    let (status, body) = get_stats(g, Some(&format!("Bearer {a}"))).await;
    assert_eq!(status, 200, "{body}");
    let hash = token::revocation_hash(&a);
    g.d1(&format!(
        "INSERT INTO RevokedToken (id, tokenHash, userId, reason, revokedAt, expiresAt) VALUES ('r-{a_user}', '{hash}', '{a_user}', 'test', 0, 99999999999999)"
    ));
    // Past half the bound, a first use of `b` queries D1, and `a` rides along.
    tokio::time::sleep(Duration::from_secs(32)).await;
    let (status, body) = get_stats(g, Some(&format!("Bearer {b}"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_stats(g, Some(&format!("Bearer {a}"))).await;
    let elapsed = started.elapsed();
    // At 60 s `a` would be refused by its own recheck: only earlier does this show the ride.
    assert!(
        elapsed < Duration::from_secs(58),
        "too slow to tell: {elapsed:?}"
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_revoked")),
        "after {elapsed:?}: {body}"
    );
}

#[tokio::test]
async fn a_valid_token_has_exactly_one_accepted_spelling() {
    // Every other spelling is malformed: refused before the revocation query, so re-spelling
    // one good token cannot force a D1 read per request, nor fill the token cache.
    let g = gw();
    let u = user("one-spelling");
    let t = token_with_both_url_characters(&u, 2_000);
    for (what, v) in respellings(&t) {
        let (status, body) = get_stats(g, Some(&format!("Bearer {v}"))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{what}: {body}"
        );
    }
    let (status, body) = get_stats(g, Some(&format!("Bearer {t}"))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_ticket_spelled_differently_is_refused() {
    let g = gw();
    let u = user("tick-spelling");
    let t = platform_token(&u);
    let tk = ticket_for(g, &t).await;
    for v in [format!("{tk}="), format!("{tk}=="), format!("{tk}.")] {
        let r = g
            .try_upgrade(&format!("/v1/updates?ticket={}", query_value(&v)), &[])
            .await;
        let (status, body) = r.err().unwrap_or_else(|| panic!("{v} accepted"));
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "invalid_ticket"),
            "{v}"
        );
    }
    // The ticket as issued still works (the refusals did not redeem it).
    g.try_upgrade(&format!("/v1/updates?ticket={tk}"), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lookalike_localhost_origin_gets_no_cors() {
    let g = cors_gw();
    let t = platform_token(&user("cors-lookalike"));
    let c = reqwest::Client::new();
    for (origin, allowed) in [
        ("https://localhost.evil.tld", false),
        ("https://evil-localhost.tld", false),
        ("http://127.0.0.1.evil.tld", false),
        ("https://evil.tld:443", false),
        ("https://happy.app.evil.tld", false),
        ("http://localhost", true),
        ("https://localhost:3000", true),
        ("http://127.0.0.1:8081", true),
        ("https://happy.app", true),
    ] {
        let r = c
            .get(format!("{}/v1/websocket/stats", g.http()))
            .header("origin", origin)
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            h("access-control-allow-origin").as_deref(),
            allowed.then_some(origin),
            "{origin}"
        );
        assert_eq!(
            h("access-control-allow-credentials").as_deref(),
            allowed.then_some("true"),
            "{origin}"
        );
    }
}
