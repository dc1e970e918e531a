//! Who is calling: the platform's tokens (cached per isolate, checked against the
//! `RevokedToken` table when the D1 binding is configured) and tickets (verified, then
//! redeemed once with the user's home); what this isolate knows of the user's placement; and
//! the one way the gateway reaches a user's home.

use std::cell::RefCell;

use worker::{Env, Request};

use crate::auth::cache::{BoundedMap, Lookup, CAPACITY};
use crate::auth::ticket_book::Redeem as Redemption;
use crate::auth::{self, ticket, token, Credential, TokenCache, TokenRef};
use crate::config::Config;
use crate::object_api::{Placement, Redeem, Redeemed};
use crate::protocol::ApiError;
use crate::runtime;

/// How long a gateway isolate trusts what it learned of a user's placement (its tier and
/// limit, and its spread level) from the user's shards. The limit never depends on it (the
/// home resolves the tier at every admission); placement and SLO targets do, for at most
/// this long after a change made through another isolate.
pub const PLACEMENT_CACHE_MS: u64 = 10_000;

thread_local! {
    static TOKENS: RefCell<TokenCache> = RefCell::new(TokenCache::default());
    static PLACEMENTS: RefCell<BoundedMap<(Placement, u64)>> =
        RefCell::new(BoundedMap::new(CAPACITY));
}

/// An authenticated caller and what this isolate knows of its placement.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub placement: Placement,
    /// The token the socket will end with (for a ticket, the one it was issued for).
    pub token: Option<TokenRef>,
}

/// How an endpoint words a refusal: the upgrade's texts or the REST middleware's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wording {
    Upgrade,
    Http,
}

/// The user of a platform token and the token's reference: from the cache, else verified
/// (signature before the revocation query, so garbage never costs a D1 read) and cached. A
/// cached token whose revocation check is older than the bound is only checked for
/// revocation again: its signature cannot have changed.
pub async fn user_of_token(
    env: &Env,
    cfg: &Config,
    token: &str,
    wording: Wording,
) -> Result<(String, TokenRef), ApiError> {
    let now_ms = runtime::now_ms();
    let prefix = match wording {
        Wording::Upgrade => "Invalid authentication token",
        Wording::Http => "Invalid token",
    };
    let revoked_error = || {
        ApiError::new(
            401,
            "token_revoked",
            format!("{prefix}: this token was revoked; sign in again"),
        )
    };
    match TOKENS.with(|c| c.borrow_mut().get(token, now_ms)) {
        Lookup::Hit(user, r) => return Ok((user, r)),
        // `revoked` keeps the answer in the cache: forgotten if revoked, else checked now.
        Lookup::Recheck(user, r) => {
            if revoked(env, &r.token_hash, now_ms).await? {
                return Err(revoked_error());
            }
            return Ok((user, r));
        }
        Lookup::Miss => {}
    }
    let v = token::verify(token, &cfg.token_keys, now_ms / 1000)
        .map_err(|e| ApiError::new(401, e.code(), format!("{prefix}: {e}")))?;
    let r = TokenRef::of(token, v.exp);
    if revoked(env, &r.token_hash, now_ms).await? {
        return Err(revoked_error());
    }
    TOKENS.with(|c| c.borrow_mut().insert(token, &v.user_id, r.clone(), now_ms));
    Ok((v.user_id, r))
}

/// Forgets a token this isolate verified (an operator revoked it through this isolate).
pub fn forget_token_hash(hash: &str) {
    TOKENS.with(|c| c.borrow_mut().forget_hash(hash));
}

/// Most tokens one revocation query asks about (D1 binds at most 100 parameters).
const REVOCATION_BATCH: usize = 50;

/// Whether a token's revocation hash is in `RevokedToken`; `false` when no D1 binding is
/// configured. The same query asks about the cached tokens whose last check is half the
/// bound old or older ([`TokenCache::riders`]) and keeps their answers, so an isolate with
/// many tokens makes one query per batch instead of one per token, none checked later than
/// the bound.
async fn revoked(env: &Env, token_hash: &str, now_ms: u64) -> Result<bool, ApiError> {
    #[derive(serde::Deserialize)]
    struct Row {
        #[serde(rename = "tokenHash")]
        token_hash: String,
    }
    let Ok(db) = env.d1(crate::object_api::REVOCATION_DB) else {
        return Ok(false);
    };
    let unavailable = |e: worker::Error| {
        worker::console_error!("revocation check failed: {e}");
        // Fail closed: a token that might be revoked is not let through.
        ApiError::new(
            503,
            "revocation_unavailable",
            "the token revocation list could not be read; retry",
        )
        .retry_after(1)
    };
    let mut asked = vec![token_hash.to_owned()];
    asked.extend(TOKENS.with(|c| c.borrow().riders(now_ms, token_hash, REVOCATION_BATCH - 1)));
    let slots: Vec<String> = (1..=asked.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "SELECT tokenHash FROM RevokedToken WHERE tokenHash IN ({})",
        slots.join(", ")
    );
    let params: Vec<wasm_bindgen::JsValue> = asked.iter().map(|h| h.as_str().into()).collect();
    let rows: Vec<Row> = db
        .prepare(&sql)
        .bind(&params)
        .map_err(unavailable)?
        .all()
        .await
        .map_err(unavailable)?
        .results()
        .map_err(unavailable)?;
    let revoked: Vec<String> = rows.into_iter().map(|r| r.token_hash).collect();
    TOKENS.with(|c| c.borrow_mut().checked(&asked, &revoked, now_ms));
    Ok(revoked.iter().any(|h| h == token_hash))
}

/// Whether token revocation is configured (for `/health`).
pub fn revocation_configured(env: &Env) -> bool {
    env.d1(crate::object_api::REVOCATION_DB).is_ok()
}

/// The caller of an HTTP endpoint: `Authorization: Bearer <token>`.
pub async fn http_user(req: &Request, env: &Env, cfg: &Config) -> Result<String, ApiError> {
    http_caller(req, env, cfg).await.map(|(user, _)| user)
}

/// The caller of an HTTP endpoint and the token it presented.
pub async fn http_caller(
    req: &Request,
    env: &Env,
    cfg: &Config,
) -> Result<(String, TokenRef), ApiError> {
    let header = req.headers().get("authorization").ok().flatten();
    let Some(t) = auth::bearer(header.as_deref()) else {
        return Err(ApiError::new(
            401,
            "missing_authorization",
            "Missing authorization header: send `Authorization: Bearer <token>`",
        ));
    };
    user_of_token(env, cfg, t, Wording::Http).await
}

/// The caller of an upgrade, by the platform's precedence: a ticket (no fallback when bad),
/// then `?token=`, then the `Authorization` header.
pub async fn upgrade_caller(
    req: &Request,
    pairs: &[(String, String)],
    env: &Env,
    cfg: &Config,
) -> Result<Caller, ApiError> {
    let q = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let header = req.headers().get("authorization").ok().flatten();
    match auth::upgrade_credential(q("ticket"), q("token"), header.as_deref()) {
        Credential::Ticket(t) => ticket_caller(env, cfg, t).await,
        Credential::Token(t) => {
            let (user, token) = user_of_token(env, cfg, t, Wording::Upgrade).await?;
            Ok(Caller {
                placement: placement_of(cfg, &user),
                user,
                token: Some(token),
            })
        }
        Credential::Missing => Err(ApiError::new(
            401,
            "missing_credentials",
            "Missing authentication (provide ticket or token): `?ticket=`, `?token=` or `Authorization: Bearer <token>`",
        )),
    }
}

/// Verifies a ticket, then redeems its nonce with the user's home, which answers the tier
/// too: a ticket connect costs that one call.
async fn ticket_caller(env: &Env, cfg: &Config, t: &str) -> Result<Caller, ApiError> {
    let invalid = |detail: String| {
        ApiError::new(
            401,
            "invalid_ticket",
            format!("Invalid or expired ticket: {detail}"),
        )
    };
    let tk = ticket::verify(t, cfg.master_secret.expose().as_bytes(), runtime::now_ms())
        .map_err(|e| invalid(e.to_string()))?;
    let r: Redeemed = runtime::ask_home(
        env,
        &tk.user_id,
        &Redeem {
            nonce: tk.nonce.clone(),
            exp_ms: tk.exp_ms,
        },
    )
    .await?;
    match r.result {
        Redemption::Fresh => {
            let mut placement = placement_of(cfg, &tk.user_id);
            placement.tier = r.tier.tier;
            placement.limit = r.tier.limit;
            Ok(Caller {
                user: tk.user_id,
                placement,
                token: r.token,
            })
        }
        Redemption::Replayed => Err(ApiError::new(
            401,
            "ticket_replayed",
            "Invalid or expired ticket: it was already used; tickets are single-use, ask for a new one",
        )),
        Redemption::Full => Err(ApiError::new(
            429,
            "too_many_tickets",
            "too many unexpired tickets redeemed for this user; retry in a few seconds",
        )
        .retry_after(5)),
    }
}

/// What this isolate knows of the user's placement: learned from the user's shards within
/// [`PLACEMENT_CACHE_MS`], else `DEFAULT_TIER` on the user's home (spread 0).
pub fn placement_of(cfg: &Config, user: &str) -> Placement {
    let now = runtime::now_ms();
    let cached = PLACEMENTS.with(|c| {
        c.borrow()
            .get(user)
            .filter(|(_, at)| now.saturating_sub(*at) < PLACEMENT_CACHE_MS)
            .map(|(p, _)| p.clone())
    });
    cached.unwrap_or_else(|| {
        let (tier, t) = cfg.resolve_tier(None);
        Placement {
            tier: tier.to_owned(),
            limit: t.limit,
            spread: 0,
        }
    })
}

/// Remembers what a shard said of the user's placement.
pub fn remember_placement(user: &str, p: &Placement) {
    let now = runtime::now_ms();
    PLACEMENTS.with(|c| c.borrow_mut().insert(user, (p.clone(), now)));
}

/// Forgets what this isolate knows of the user's placement (its tier changed here).
pub fn forget_placement(user: &str) {
    PLACEMENTS.with(|c| c.borrow_mut().remove(user));
}

pub fn authorize(req: &Request, cfg: &Config) -> Result<(), ApiError> {
    if cfg.admin_token.is_empty() {
        return Err(ApiError::new(
            403,
            "admin_disabled",
            "admin endpoints are disabled: set the ADMIN_TOKEN secret",
        ));
    }
    let header = req.headers().get("authorization").ok().flatten();
    let Some(given) = auth::bearer(header.as_deref()) else {
        return Err(ApiError::new(
            401,
            "missing_admin_token",
            "send `Authorization: Bearer <ADMIN_TOKEN>`",
        ));
    };
    if !auth::admin_token_matches(given, cfg.admin_token.expose()) {
        return Err(ApiError::new(
            401,
            "invalid_admin_token",
            "this endpoint needs the ADMIN_TOKEN; user tokens are not accepted",
        ));
    }
    Ok(())
}
