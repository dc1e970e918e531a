//! The revocation feed: one object (`revocations`) that reads the platform's `RevokedToken`
//! table for rows newer than it has seen, every `REVOCATION_POLL_MS`, and ends the sockets of
//! each revoked token across its user's shards (`auth-error`, then close 4001).
//!
//! So a revoked token stops working on open sockets within one poll (5 s by default) plus the
//! fan-out, with one D1 query per poll for the whole deployment, never one per socket or per
//! frame. Each revocation is dispatched twice: at once, and again once every gateway isolate's
//! token cache has rechecked it (`auth::cache::RECHECK_MS` later), which ends a socket opened
//! in between with a cached copy of the token. A gateway isolate arms the feed on its first
//! request; a deploy restarts every object and drops every socket, so sockets older than the
//! feed's first poll were authenticated against the table.

use std::cell::RefCell;
use std::rc::Rc;

use worker::{console_error, durable_object, DurableObject, Env, Request, Response, State};

use crate::auth::cache::RECHECK_MS;
pub use crate::auth::revocation::Feed;
use crate::auth::revocation::Row;
use crate::object_api::{Disconnect, DisconnectUser, Done, Ensure, FeedStatus, Message};
use crate::protocol::CredentialEnd;
use crate::runtime::{self, Call, Reply};

const KEY: &str = "feed";
/// Rows read per query; a full page is followed by another query at once.
const PAGE: u32 = 100;

#[durable_object]
pub struct Revocations {
    state: State,
    env: Env,
    feed: Rc<RefCell<Feed>>,
}

impl DurableObject for Revocations {
    fn new(state: State, env: Env) -> Self {
        let feed = Rc::new(RefCell::new(Feed::default()));
        let slot = feed.clone();
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            match storage.get::<Feed>(KEY).await {
                Ok(Some(f)) => *slot.borrow_mut() = f,
                // First start: look back over what a token cache may still hold.
                _ => {
                    slot.borrow_mut().watermark_ms =
                        runtime::now_ms().saturating_sub(2 * RECHECK_MS)
                }
            }
            Ok(())
        });
        Self { state, env, feed }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        self.on_call(Call::read(req).await?).await?.into_response()
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = runtime::now_ms();
        let poll_ms = runtime::config(&self.env)
            .map(|c| c.revocation_poll_ms)
            .unwrap_or(5_000);
        let full_page = self.poll(now).await;
        self.dispatch_due().await;
        let snapshot = self.feed.borrow().clone();
        self.state.storage().put(KEY, &snapshot).await?;
        let next_poll = if full_page { now } else { now + poll_ms };
        let at = snapshot.next_due().map_or(next_poll, |d| d.min(next_poll));
        self.state
            .storage()
            .set_alarm(runtime::scheduled(at))
            .await?;
        Response::ok("")
    }

    runtime::socketless_handlers!();
}

runtime::rpc_object!(Revocations);

impl Revocations {
    async fn on_call(&self, call: Call) -> worker::Result<Reply> {
        match call.path.as_str() {
            <Ensure as Message>::PATH => {
                if self.state.storage().get_alarm().await?.is_none() {
                    self.state
                        .storage()
                        .set_alarm(runtime::scheduled(runtime::now_ms()))
                        .await?;
                }
                Reply::json(&Done {})
            }
            <FeedStatus as Message>::PATH => {
                let f = self.feed.borrow().clone();
                Reply::json(&f)
            }
            p => Ok(Reply::no_route(p.to_owned())),
        }
    }
}

impl Revocations {
    /// Reads one page of new rows; answers whether it was full (more may follow).
    async fn poll(&self, now: u64) -> bool {
        let Ok(db) = self.env.d1(crate::object_api::REVOCATION_DB) else {
            return false;
        };
        let watermark = self.feed.borrow().watermark_ms;
        let stmt = db
            .prepare(
                "SELECT tokenHash, userId, revokedAt FROM RevokedToken \
                 WHERE revokedAt >= ?1 ORDER BY revokedAt, tokenHash LIMIT ?2",
            )
            .bind(&[(watermark as f64).into(), f64::from(PAGE).into()]);
        let rows = match stmt {
            Ok(s) => s.all().await.and_then(|r| r.results::<Row>()),
            Err(e) => Err(e),
        };
        let mut f = self.feed.borrow_mut();
        f.last_poll_ms = Some(now);
        match rows {
            Ok(rows) => {
                f.last_error = None;
                let new = f.take_rows(&rows, now);
                // A page of rows all at one instant that were all seen would never advance.
                rows.len() == PAGE as usize && new > 0
            }
            Err(e) => {
                console_error!("revocation poll failed: {e}");
                f.last_error = Some(e.to_string());
                false
            }
        }
    }

    /// Ends the sockets of every revocation that is due.
    async fn dispatch_due(&self) {
        let now = runtime::now_ms();
        let due = self.feed.borrow_mut().due(now);
        let env = &self.env;
        let calls = due.into_iter().map(|p| async move {
            let d = Disconnect {
                token_hash: Some(p.token_hash.clone()),
                reason: Some(CredentialEnd::Revoked),
                ..Disconnect::default()
            };
            let r = runtime::ask_home(env, &p.user_id, &DisconnectUser(d)).await;
            let result = match r {
                Ok(done) if done.failed_shards.is_empty() => Ok(done.closed),
                _ => Err(()),
            };
            (p, result)
        });
        for (p, result) in futures::future::join_all(calls).await {
            self.feed.borrow_mut().dispatched(p, result, now);
        }
    }
}

/// Arms the feed once per gateway isolate (it then keeps itself going).
pub fn ensure(env: &Env, ctx: &worker::Context) {
    thread_local! {
        static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if ARMED.with(|a| a.replace(true)) || env.d1(crate::object_api::REVOCATION_DB).is_err() {
        return;
    }
    let env = env.clone();
    runtime::wait_until(ctx, async move {
        let Ok(stub) = runtime::object(
            &env,
            crate::object_api::REVOCATIONS_BINDING,
            crate::object_api::REVOCATIONS_NAME,
        ) else {
            return;
        };
        let r = runtime::ask(&stub, None, &Ensure {}).await;
        if let Err(e) = r {
            console_error!("revocation feed not armed: {e}");
            ARMED.with(|a| a.set(false));
        }
    });
}
