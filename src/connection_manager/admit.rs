//! Admission on the shard: the per-shard cap, the SLO check, leases from the
//! directory (see `lease`), accepting sockets, and giving slots back.

use wasm_bindgen::JsValue;
use worker::{console_error, Request, Response, WebSocketPair};

use super::ConnectionManager;
use super::{MAX_ADMIT_ROUNDS, RETRY_PAUSE_MS};
use crate::admission::{self, Health, ShardLoad};
use crate::config::Config;
use crate::lease::Admit;
use crate::metrics::{Outcome, Series};
use crate::placement;
use crate::protocol::{self, ApiError};
use crate::rpc::{self, Connect, Reclaimed};
use crate::runtime::{self, CONNECT_HEADER};

/// Carries a refusing shard's health to the gateway: `full`, or
/// `over_latency;ratio=R` (recent p95 / the tier's objective).
pub const HEALTH_HEADER: &str = "x-edge-health";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Full, draining, over its objective, no directory: another shard may take it.
    Capacity,
    /// The user is at the tier limit: final.
    TierLimit,
}

impl ConnectionManager {
    pub(super) async fn open_socket(
        &self,
        req: &Request,
        cfg: &Config,
        started: u64,
    ) -> worker::Result<Response> {
        let connect: Connect = match req
            .headers()
            .get(CONNECT_HEADER)?
            .and_then(|h| serde_json::from_str(&h).ok())
        {
            Some(c) => c,
            None => {
                return runtime::error(&ApiError::bad_request(
                    "bad_connect",
                    "missing or invalid connect metadata",
                ))
            }
        };
        self.learn_name(&connect.shard);
        {
            let mut s = self.saved.borrow_mut();
            s.tier.clone_from(&connect.meta.tier);
            if s.user.is_empty() {
                s.user.clone_from(&connect.meta.user_id);
            }
        }
        if self.saved.borrow().draining {
            return self
                .refuse(
                    Refusal::Capacity,
                    ApiError::new(
                        503,
                        "shard_draining",
                        "this shard is draining for rotation; reconnect",
                    ),
                )
                .await;
        }
        if connect.strict {
            if let Some((e, health)) = self.over_slo(cfg, &connect) {
                return self.refuse_with(Refusal::Capacity, e, &health).await;
            }
        }
        // A few rounds: a grant can be reclaimed between its answer and the
        // accept, and a directory that is short while slots are on their way
        // to another shard asks us to retry shortly.
        for round in 0..MAX_ADMIT_ROUNDS {
            let open = self.open_count();
            let admit =
                self.saved
                    .borrow()
                    .lease
                    .admit(open, cfg.shard_max_connections, cfg.lease_batch);
            match admit {
                Admit::Accept => return self.accept(&connect, started).await,
                Admit::Full => {
                    return self
                        .refuse(
                            Refusal::Capacity,
                            ApiError::new(
                                503,
                                "shard_full",
                                format!(
                                "shard holds {open} sockets, its cap (SHARD_MAX_CONNECTIONS={})",
                                cfg.shard_max_connections
                            ),
                            )
                            .retry_after(1),
                        )
                        .await
                }
                Admit::Acquire(want) => {
                    let granted = {
                        let _guard = self.directory_lock.lock().await;
                        // Another connect may have leased while we waited.
                        if self.saved.borrow().lease.leased > self.open_count() {
                            continue;
                        }
                        self.acquire(&connect, want, open).await
                    };
                    match granted {
                        Ok(g) if g.granted > 0 => {}
                        Ok(g) if g.retry && round + 1 < MAX_ADMIT_ROUNDS => {
                            // Backs off 10, 20, 40, 80, 160 ms: grants land in
                            // milliseconds, longer only on a loaded machine.
                            runtime::sleep(RETRY_PAUSE_MS << round).await;
                        }
                        Ok(g) => {
                            return self
                                .refuse(
                                    Refusal::TierLimit,
                                    ApiError::new(
                                        429,
                                        "tier_limit",
                                        format!(
                                            "Connection limit exceeded: tier `{}` allows {} open connections; close one or ask the operator for a higher tier",
                                            g.tier.tier, g.tier.limit
                                        ),
                                    )
                                    .retry_after(5),
                                )
                                .await;
                        }
                        Err(e) => {
                            console_error!("acquire failed: {e}");
                            return self
                                .refuse(
                                    Refusal::Capacity,
                                    ApiError::new(
                                        503,
                                        "directory_unavailable",
                                        "the user's directory did not answer; retry",
                                    )
                                    .retry_after(1),
                                )
                                .await;
                        }
                    }
                }
            }
        }
        self.refuse(
            Refusal::Capacity,
            ApiError::new(
                503,
                "lease_contended",
                "could not hold a connection slot; retry",
            )
            .retry_after(1),
        )
        .await
    }

    async fn acquire(&self, c: &Connect, want: u32, open: u32) -> worker::Result<rpc::Granted> {
        let dir = runtime::stub(
            &self.env,
            placement::DIRECTORY_BINDING,
            &placement::directory_name(&c.meta.user_id),
        )?;
        let body = rpc::Acquire {
            shard: c.shard.clone(),
            want,
            need: 1,
            open,
        };
        self.saved.borrow_mut().round_trips += 1;
        let g: rpc::Granted = runtime::call(&dir, "/acquire", None, &body).await?;
        {
            let mut s = self.saved.borrow_mut();
            s.lease.apply(g.granted, g.seq);
            // The directory's resolution wins over the gateway's cached tier.
            if !g.tier.tier.is_empty() {
                s.tier.clone_from(&g.tier.tier);
            }
        }
        self.learn_view(g.view.clone());
        // Saved at once (acquires are rare): a grant lost in a restart leaves the ledger
        // over-counting this shard, and a shard's own acquire never reclaims from itself.
        if g.granted > 0 {
            self.save().await?;
        }
        Ok(g)
    }

    async fn accept(&self, c: &Connect, started: u64) -> worker::Result<Response> {
        let pair = WebSocketPair::new()?;
        let tags: Vec<JsValue> = c
            .meta
            .tags()
            .into_iter()
            .map(|t| JsValue::from_str(&t))
            .collect();
        if let Err(e) = self
            .state
            .as_raw()
            .accept_websocket_with_tags(pair.server.as_ref(), tags)
        {
            console_error!("accept failed: {e:?}");
            return runtime::error(&ApiError::new(500, "accept_failed", "could not accept"));
        }
        pair.server.serialize_attachment(&c.meta)?;
        // `connected` is the first frame (the web clients wait for it): sent before any
        // await lets a delivery reach the new socket.
        let now = runtime::now_ms();
        let policy = runtime::config(&self.env)
            .map(|cfg| cfg.policy_name.clone())
            .unwrap_or_default();
        pair.server
            .send_with_str(protocol::connected_frame(&c.meta, &c.shard, &policy, now))?;
        // Counted before any await, so the next connect's admission sees it; presence is
        // reported before the 101 when it changed, so the socket is routable by then.
        let bytes = serde_json::to_string(&c.meta).map_or(0, |s| s.len() as u64);
        self.count_socket(&c.meta, bytes).await;
        if let Ok(cfg) = runtime::config(&self.env) {
            if cfg.upstream.posts_hooks() {
                let hook = self.connected_hook(&c.meta);
                self.post_hooks(&cfg, vec![hook]).await;
            }
        }
        let drain_from = {
            let mut s = self.saved.borrow_mut();
            s.accepted += 1;
            // A rotation shard drains from its epoch's end, alarm-driven so it
            // happens while the object hibernates.
            match placement::rotation_of(&c.shard) {
                Some((rotation, epoch)) if s.drain_at.is_none() && !s.draining => {
                    s.drain_at = Some(rotation.epoch_end_ms(epoch));
                    true
                }
                _ => false,
            }
        };
        if drain_from {
            self.save().await?;
            self.rearm().await?;
        } else {
            // Only the accept counter changed: a crash may lose a second of it.
            self.save_soon().await;
        }
        self.observe_outcome(Outcome::Success).await;
        self.observe_latency(Series::ConnectAdmission, started)
            .await;
        Response::from_websocket(pair.client)
    }

    /// A capacity refusal tells the gateway this shard's health, so it can
    /// try another candidate or, when none is healthy, decide to shed.
    async fn refuse(&self, kind: Refusal, e: ApiError) -> worker::Result<Response> {
        self.refuse_with(kind, e, "full").await
    }

    async fn refuse_with(
        &self,
        kind: Refusal,
        e: ApiError,
        health: &str,
    ) -> worker::Result<Response> {
        let outcome = match kind {
            Refusal::Capacity => {
                self.saved.borrow_mut().rejected += 1;
                Outcome::ShardRefused
            }
            Refusal::TierLimit => {
                self.saved.borrow_mut().rejected_tier_limit += 1;
                Outcome::TierLimit
            }
        };
        self.save().await?;
        self.observe_outcome(outcome).await;
        let mut resp = runtime::error(&e)?;
        if kind == Refusal::Capacity {
            resp.headers_mut().set(HEALTH_HEADER, health)?;
        }
        Ok(resp)
    }

    /// First pass: a shard over its tier's latency objective refuses, with
    /// its health for the gateway's second pass.
    fn over_slo(&self, cfg: &Config, c: &Connect) -> Option<(ApiError, String)> {
        let target = cfg.tier(&c.meta.tier)?.latency_p95_ms;
        let open = u64::from(self.open_count());
        let (p95_ms, samples) = self.observer.borrow_mut().recent_p95(runtime::now_ms());
        let load = ShardLoad {
            open,
            cap: u64::from(cfg.shard_max_connections),
            p95_ms,
            samples,
        };
        let Health::OverLatency { ratio } = admission::health(&load, target) else {
            return None;
        };
        let p95 = load.p95_ms.unwrap_or_default();
        let e = ApiError::new(
            503,
            "shard_over_slo",
            format!(
                "this shard's recent p95 {p95:.0} ms is over tier `{}`'s {target} ms objective",
                c.meta.tier
            ),
        )
        .retry_after(1);
        Some((e, format!("over_latency;ratio={ratio:.3}")))
    }

    /// Gives surplus slots back after sockets closed (they are already out of the index).
    pub(super) async fn settle(&self) -> worker::Result<()> {
        self.give_back().await?;
        self.retire_soon().await;
        Ok(())
    }

    async fn give_back(&self) -> worker::Result<()> {
        let batch = runtime::config(&self.env)
            .map(|c| c.lease_batch)
            .unwrap_or(8);
        let open = self.open_count();
        if self.saved.borrow().lease.surplus_after_close(open, batch) == 0 {
            return Ok(());
        }
        let _guard = self.directory_lock.lock().await;
        let open = self.open_count();
        let (n, user, shard, draining) = {
            let mut s = self.saved.borrow_mut();
            let n = s.lease.surplus_after_close(open, batch);
            s.lease.give_back(n);
            (n, s.user.clone(), s.name.clone(), s.draining)
        };
        if n == 0 || user.is_empty() {
            return Ok(());
        }
        // Persist the smaller lease before the directory hears of it.
        self.save().await?;
        let reset = open == 0 && self.saved.borrow().lease.leased == 0;
        let dir = runtime::stub(
            &self.env,
            placement::DIRECTORY_BINDING,
            &placement::directory_name(&user),
        )?;
        let body = rpc::Release {
            shard,
            n,
            open,
            draining,
            reset,
        };
        self.saved.borrow_mut().round_trips += 1;
        let r: worker::Result<serde_json::Value> =
            runtime::call(&dir, "/release", None, &body).await;
        if let Err(e) = r {
            // The directory keeps counting these slots until it reclaims.
            console_error!("release failed: {e}");
        }
        if reset {
            *self.view.borrow_mut() = None;
        }
        // The smaller lease was saved before the directory heard; this is bookkeeping.
        self.save_soon().await;
        Ok(())
    }

    /// The directory asks for spare slots. Never takes `directory_lock`: the
    /// directory may be serving this shard's own acquire while it asks.
    pub(super) async fn reclaim(&self) -> worker::Result<Reclaimed> {
        let open = self.open_count();
        // Free lock: no acquire of ours is in flight, so no grant can still arrive.
        let quiet = self.directory_lock.try_lock().is_some();
        let (released, draining, applied) = {
            let mut s = self.saved.borrow_mut();
            (s.lease.reclaim(open), s.draining, s.lease.applied)
        };
        if released > 0 {
            self.save().await?;
            self.retire_soon().await;
        }
        Ok(Reclaimed {
            lease: crate::lease::Returned {
                released,
                open,
                draining,
                applied,
                quiet,
            },
            presence: self.presence_report(),
        })
    }
}
