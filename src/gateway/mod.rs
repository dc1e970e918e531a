//! The stateless gateway Worker: routing, auth, placement and fan-out.

mod admin;
mod fanout;
mod upgrade;

use serde::Serialize;
use worker::{Context, Env, Method, Request, Response};

use crate::auth::{self, Claims};
use crate::config::{Config, Tier};
use crate::protocol::ApiError;
use crate::runtime;

pub async fn handle(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let path = req.path();
    let cfg = runtime::config(&env);
    if path == "/health" {
        return health(&cfg);
    }
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            return runtime::error(&ApiError::new(
                503,
                "invalid_config",
                format!("the gateway is misconfigured: {e}"),
            ))
        }
    };
    let result = match (req.method(), path.as_str()) {
        (Method::Get, "/v1/updates" | "/v1/websocket") => {
            upgrade::upgrade(&req, &env, &ctx, &cfg).await
        }
        (Method::Post, "/v1/websocket/broadcast") => {
            fanout::broadcast(req, &env, &ctx, &cfg).await
        }
        (Method::Get, "/v1/websocket/stats") => fanout::stats(&req, &env, &ctx, &cfg).await,
        (Method::Get, "/metrics") => admin::metrics(&req, &env, &cfg).await,
        (Method::Get, "/admin/stats") => admin::stats(&req, &env, &cfg).await,
        (Method::Get, "/admin/slo") => admin::slo(&req, &env, &cfg).await,
        (Method::Post, "/admin/test/shard") if cfg.test_knobs => {
            admin::test_shard(req, &env, &cfg).await
        }
        (_, "/v1/updates" | "/v1/websocket" | "/v1/websocket/stats") => {
            Err(method_not_allowed("GET"))
        }
        (_, "/v1/websocket/broadcast") => Err(method_not_allowed("POST")),
        (_, "/metrics" | "/admin/stats" | "/admin/slo") => Err(method_not_allowed("GET")),
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!(
                "no route {}; see /health, /v1/updates, /v1/websocket/broadcast, /v1/websocket/stats, /metrics, /admin/stats, /admin/slo",
                crate::protocol::truncate(&path, 100)
            ),
        )),
    };
    match result {
        Ok(resp) => Ok(resp),
        Err(e) => runtime::error(&e),
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(
        405,
        "method_not_allowed",
        format!("use {allowed} on this path"),
    )
}

fn health(
    cfg: &Result<std::rc::Rc<Config>, crate::config::ConfigError>,
) -> worker::Result<Response> {
    #[derive(Serialize)]
    struct Ok<'a> {
        status: &'static str,
        policy: &'a str,
        version: &'static str,
    }
    match cfg {
        Result::Ok(c) => runtime::json(
            200,
            &Ok {
                status: "ok",
                policy: &c.policy_name,
                version: env!("CARGO_PKG_VERSION"),
            },
        ),
        Err(e) => runtime::json(
            503,
            &serde_json::json!({
                "status": "error",
                "error": "invalid_config",
                "var": e.var,
                "message": e.to_string(),
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
    }
}

/// The caller, from a verified token whose tier is configured.
pub struct Caller<'c> {
    pub claims: Claims,
    pub tier: &'c Tier,
}

pub fn authenticate<'c>(req: &Request, cfg: &'c Config) -> Result<Caller<'c>, ApiError> {
    let url = req
        .url()
        .map_err(|_| ApiError::bad_request("bad_url", "request URL does not parse"))?;
    let query_token = url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let header = req.headers().get("authorization").ok().flatten();
    let token = auth::token_from(query_token.as_deref(), header.as_deref());
    let now_s = runtime::now_ms() / 1000;
    let claims = auth::verify(token, cfg.auth_secret.as_bytes(), now_s)
        .map_err(|e| ApiError::new(401, e.code(), e.to_string()))?;
    let tier = cfg.tier(&claims.tier).ok_or_else(|| {
        ApiError::new(
            401,
            "unknown_tier",
            format!(
                "token tier `{}` is not configured; configured tiers: {}",
                crate::protocol::truncate(&claims.tier, 64),
                cfg.tier_names()
            ),
        )
    })?;
    Ok(Caller { claims, tier })
}

/// Sends what the gateway saw for a user to the user's directory, after the
/// answer (metrics never delay a client).
pub fn observe_later(env: &Env, ctx: &Context, user: &str, o: crate::rpc::Observed) {
    let env = env.clone();
    let name = crate::placement::directory_name(user);
    runtime::wait_until(ctx, async move {
        let Ok(stub) = runtime::stub(&env, crate::placement::DIRECTORY_BINDING, &name) else {
            return;
        };
        let r: worker::Result<serde_json::Value> = runtime::call(&stub, "/observe", None, &o).await;
        if let Err(e) = r {
            worker::console_error!("could not record observations: {e}");
        }
    });
}
