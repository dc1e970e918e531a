//! `POST /v1/websocket/ticket`: a short-lived, single-use ticket for the upgrade URL, in the
//! platform's exact format (the web apps cannot set headers on a WebSocket).

use worker::{Env, Request, Response};

use super::caller;
use crate::auth::ticket;
use crate::auth::ticket_book::{Issue, TICKETS_PER_MINUTE};
use crate::config::Config;
use crate::object_api::IssueTicket;
use crate::protocol::ApiError;
use crate::runtime;
use crate::runtime::ask_home;

pub async fn issue(req: &Request, env: &Env, cfg: &Config) -> Result<Response, ApiError> {
    // Authentication first, then the per-user limit (the platform's order).
    let (user, token) = caller::http_caller(req, env, cfg).await?;
    // The ticket's socket ends with the token it was issued for: the home keeps that
    // token's reference under the nonce until the ticket is redeemed.
    let nonce = ticket::uuid_v4(runtime::random16());
    let issue: Issue = ask_home(
        env,
        &user,
        &IssueTicket {
            nonce: nonce.clone(),
            token,
        },
    )
    .await?;
    let limit = TICKETS_PER_MINUTE.to_string();
    match issue {
        Issue::Allowed { remaining } => {
            let t = ticket::mint(
                cfg.master_secret.expose().as_bytes(),
                &user,
                runtime::now_ms(),
                &nonce,
            );
            runtime::json_with_headers(
                200,
                &serde_json::json!({ "ticket": t }),
                &[
                    ("x-ratelimit-limit", limit),
                    ("x-ratelimit-remaining", remaining.to_string()),
                ],
            )
            .map_err(ApiError::internal)
        }
        Issue::Limited { retry_after_s } => runtime::json_with_headers(
            429,
            &serde_json::json!({
                "error": "rate_limited",
                "message": format!("Rate limit exceeded: {TICKETS_PER_MINUTE} tickets per user per minute; retry in {retry_after_s} s"),
                "retryAfter": retry_after_s,
            }),
            &[
                ("retry-after", retry_after_s.to_string()),
                ("x-ratelimit-limit", limit),
                ("x-ratelimit-remaining", "0".into()),
            ],
        )
        .map_err(ApiError::internal),
    }
}
