//! Admission on the shard: the per-shard cap, the SLO check, the tier limit (the home counts
//! its own sockets against it; another shard leases slots from the home, see `lease`),
//! accepting sockets, and giving slots back.
//!
//! Every answer to a connect carries the user's placement ([`PLACEMENT_HEADER`]): the tier
//! and limit the home resolved and the user's spread level, which the gateway caches so its
//! next connect for the user goes where the user's sockets now go.

use wasm_bindgen::JsValue;
use worker::{console_error, Request, Response, WebSocketPair};

use super::ConnectionManager;
use super::{MAX_ADMIT_ROUNDS, RETRY_PAUSE_MS};
use crate::config::Config;
use crate::object_api::{
    Acquire, Connect, Granted, Placement, Reclaimed, Release, CONNECT_HEADER, HEALTH_HEADER,
    PLACEMENT_HEADER,
};
use crate::placement;
use crate::placement::admission::{self, Health, ShardLoad};
use crate::placement::lease::Admit;
use crate::placement::lease::OwnAdmit;
use crate::protocol::{self, ApiError};
use crate::runtime;
use observability::metrics::{Outcome, Series};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Full, draining, over its objective, no home, spread: another shard may take it.
    Capacity,
    /// The user is at the tier limit: final.
    TierLimit,
}

fn tier_limit_error(tier: &str, limit: u32) -> ApiError {
    ApiError::new(
        429,
        "tier_limit",
        format!(
            "Connection limit exceeded: tier `{tier}` allows {limit} open connections; close one or ask the operator for a higher tier"
        ),
    )
    .retry_after(5)
}

fn full_error(open: u32, cap: u32) -> ApiError {
    ApiError::new(
        503,
        "shard_full",
        format!("shard holds {open} sockets, its cap (SHARD_MAX_CONNECTIONS={cap})"),
    )
    .retry_after(1)
}

impl ConnectionManager {
    pub(super) async fn open_socket(
        &self,
        req: &Request,
        cfg: &Config,
        started: u64,
    ) -> worker::Result<Response> {
        let Some(mut connect) = req
            .headers()
            .get(CONNECT_HEADER)?
            .and_then(|h| serde_json::from_str::<Connect>(&h).ok())
        else {
            return runtime::error(&ApiError::bad_request(
                "bad_connect",
                "missing or invalid connect metadata",
            ));
        };
        self.learn_name(&connect.shard);
        connect.meta.shard.clone_from(&connect.shard);
        if self.is_home() {
            if let Some(n) = &connect.policy {
                // A switch this home has not heard of (its user was not in a registry when
                // it was made): rare, once per switch, so the connect may wait for it.
                if let Err(e) = self.policy_notice(n).await {
                    console_error!("policy from a connect failed: {e}");
                }
            }
        }
        if self.saved.borrow().draining {
            let e = ApiError::new(
                503,
                "shard_draining",
                "this shard is draining (rotation or a policy switch); reconnect",
            );
            return self.refuse(Refusal::Capacity, e).await;
        }
        if connect.strict {
            if let Some((e, health)) = self.over_slo(cfg, &connect) {
                return self.refuse_with(Refusal::Capacity, e, &health).await;
            }
        }
        if self.is_home() {
            self.admit_at_home(&mut connect, cfg, started).await
        } else {
            self.admit_leased(&mut connect, cfg, started).await
        }
    }

    /// The home admits against the user's limit itself: no round trip, no lease.
    async fn admit_at_home(
        &self,
        c: &mut Connect,
        cfg: &Config,
        started: u64,
    ) -> worker::Result<Response> {
        let open = self.open_count();
        if open >= cfg.shard_max_connections {
            return self
                .refuse(
                    Refusal::Capacity,
                    full_error(open, cfg.shard_max_connections),
                )
                .await;
        }
        let tier = self.home.tier_info(cfg);
        let verdict = self.home.admit_own(cfg, open, c.last_resort).await;
        *self.placement.borrow_mut() = self.home.placement(cfg);
        match verdict {
            OwnAdmit::Spread(level) => {
                let e = ApiError::new(
                    503,
                    "spread",
                    format!("this user spreads over {level} shards now; try them first"),
                );
                self.refuse(Refusal::Capacity, e).await
            }
            // Checked again right before the accept: no await between them.
            _ if self.home.has_room(self.open_count()) => {
                c.meta.tier.clone_from(&tier.tier);
                self.saved.borrow_mut().tier.clone_from(&tier.tier);
                self.accept(c, started).await
            }
            _ => {
                self.home.count_tier_refusal().await;
                self.refuse(Refusal::TierLimit, tier_limit_error(&tier.tier, tier.limit))
                    .await
            }
        }
    }

    /// Another shard admits while it holds a free leased slot, and leases more from the home
    /// when it does not. A few rounds: a grant can be reclaimed between its answer and the
    /// accept, and a home that is short while slots are on their way to another shard asks
    /// us to retry shortly.
    async fn admit_leased(
        &self,
        c: &mut Connect,
        cfg: &Config,
        started: u64,
    ) -> worker::Result<Response> {
        for round in 0..MAX_ADMIT_ROUNDS {
            let open = self.open_count();
            let admit =
                self.saved
                    .borrow()
                    .lease
                    .admit(open, cfg.shard_max_connections, cfg.lease_batch);
            match admit {
                Admit::Accept => {
                    let tier = self.saved.borrow().tier.clone();
                    if !tier.is_empty() {
                        c.meta.tier = tier;
                    }
                    return self.accept(c, started).await;
                }
                Admit::Full => {
                    return self
                        .refuse(
                            Refusal::Capacity,
                            full_error(open, cfg.shard_max_connections),
                        )
                        .await
                }
                Admit::Acquire(want) => {
                    let granted = {
                        let _guard = self.lease_lock.lock().await;
                        // Another connect may have leased while we waited.
                        if self.saved.borrow().lease.leased > self.open_count() {
                            continue;
                        }
                        self.acquire(c, want, open).await
                    };
                    match granted {
                        Ok(g) if g.granted > 0 => {}
                        Ok(g) if g.retry && round + 1 < MAX_ADMIT_ROUNDS => {
                            // Backs off 10, 20, 40, 80, 160 ms: grants land in milliseconds,
                            // longer only on a loaded machine.
                            runtime::sleep(RETRY_PAUSE_MS << round).await;
                        }
                        Ok(g) => {
                            let e = tier_limit_error(&g.placement.tier, g.placement.limit);
                            return self.refuse(Refusal::TierLimit, e).await;
                        }
                        Err(e) => {
                            console_error!("acquire failed: {e}");
                            let e = ApiError::new(
                                503,
                                "home_unavailable",
                                "the user's home shard did not answer; retry",
                            )
                            .retry_after(1);
                            return self.refuse(Refusal::Capacity, e).await;
                        }
                    }
                }
            }
        }
        let e = ApiError::new(
            503,
            "lease_contended",
            "could not hold a connection slot; retry",
        )
        .retry_after(1);
        self.refuse(Refusal::Capacity, e).await
    }

    async fn acquire(&self, c: &Connect, want: u32, open: u32) -> worker::Result<Granted> {
        let home = placement::home_name(&c.meta.user_id);
        let stub = runtime::object(&self.env, crate::object_api::SHARD_BINDING, &home)?;
        let body = Acquire {
            shard: c.shard.clone(),
            want,
            need: 1,
            open,
        };
        self.saved.borrow_mut().round_trips += 1;
        let g = runtime::ask(&stub, Some(&home), &body).await?;
        {
            let mut s = self.saved.borrow_mut();
            s.lease.apply(g.granted, g.seq);
            // The home's resolution wins over the gateway's cached tier.
            if !g.placement.tier.is_empty() {
                s.tier.clone_from(&g.placement.tier);
            }
        }
        self.announced_version
            .set(self.announced_version.get().max(g.view_version));
        *self.placement.borrow_mut() = g.placement.clone();
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
        let bytes = runtime::attach(&pair.server, &c.meta)? as u64;
        // `connected` is the first frame (the web clients wait for it): sent before any
        // await lets a delivery reach the new socket.
        let now = runtime::now_ms();
        let policy = match &c.policy {
            Some(n) if n.version > 0 => n.policy.clone(),
            _ => runtime::config(&self.env)
                .map(|cfg| cfg.policy_name.clone())
                .unwrap_or_default(),
        };
        pair.server.send_with_str(protocol::connected_frame(
            &c.meta, &c.shard, &policy, c.spread, now,
        ))?;
        self.load.borrow_mut().sent(1);
        // Counted before any await, so the next connect's admission sees it. The home hears
        // of it after the fact (its own sockets: at once, in memory).
        self.count_socket(&c.meta, bytes).await;
        if let Ok(cfg) = runtime::config(&self.env) {
            if cfg.upstream.posts_hooks() {
                let hook = self.connected_hook(&c.meta);
                self.post_hooks(&cfg, vec![hook]).await;
            }
        }
        let drain_from = {
            let mut s = self.saved.borrow_mut();
            // Memory only: persisted with the next change that must be (a crash may lose
            // what it counted since).
            s.accepted += 1;
            // A rotation shard drains from its epoch's end, alarm-driven so it happens while
            // the object hibernates.
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
        }
        self.observe_outcome(Outcome::Success).await;
        self.observe_latency(Series::ConnectAdmission, started)
            .await;
        let mut resp = Response::from_websocket(pair.client)?;
        self.with_placement(&mut resp);
        Ok(resp)
    }

    /// Adds the user's placement to an answer, when this shard knows it.
    fn with_placement(&self, resp: &mut Response) {
        let p: Placement = self.placement.borrow().clone();
        if !p.tier.is_empty() {
            let _ = resp.headers_mut().set(PLACEMENT_HEADER, &p.header());
        }
    }

    /// A capacity refusal tells the gateway this shard's health, so it can try another
    /// candidate or, when none is healthy, decide to shed.
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
        // A spread refusal is placement, not trouble: not worth a write.
        if e.code != "spread" {
            self.save().await?;
            // The refusal counts show in the user's stats.
            self.report_soon(false);
        }
        self.observe_outcome(outcome).await;
        let mut resp = runtime::error(&e)?;
        if kind == Refusal::Capacity {
            resp.headers_mut().set(HEALTH_HEADER, health)?;
        }
        self.with_placement(&mut resp);
        Ok(resp)
    }

    /// First pass: a shard over its tier's latency objective refuses, with its health for the
    /// gateway's second pass.
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

    /// Gives surplus slots back after sockets closed (they are already out of the index),
    /// then checks whether this shard can go.
    pub(super) async fn settle(&self) -> worker::Result<()> {
        if !self.is_home() {
            self.give_back().await?;
        } else if let Ok(cfg) = runtime::config(&self.env) {
            let tier = self.home.tier_info(&cfg);
            self.home.update_spread(&cfg, &tier, self.open_count());
        }
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
        let _guard = self.lease_lock.lock().await;
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
        // Persist the smaller lease before the home hears of it.
        self.save().await?;
        let reset = open == 0 && self.saved.borrow().lease.leased == 0;
        let home = placement::home_name(&user);
        let stub = runtime::object(&self.env, crate::object_api::SHARD_BINDING, &home)?;
        let body = Release {
            shard,
            n,
            open,
            draining,
            reset,
        };
        self.saved.borrow_mut().round_trips += 1;
        if let Err(e) = runtime::ask(&stub, Some(&home), &body).await {
            // The home keeps counting these slots until it reclaims.
            console_error!("release failed: {e}");
        }
        if reset {
            *self.view.borrow_mut() = None;
        }
        Ok(())
    }

    /// The home asks for spare slots. Never takes `lease_lock`: the home may be serving this
    /// shard's own acquire while it asks.
    pub(super) async fn reclaim(&self) -> worker::Result<Reclaimed> {
        let open = self.open_count();
        // Free lock: no acquire of ours is in flight, so no grant can still arrive.
        let quiet = self.lease_lock.try_lock().is_some();
        let (released, draining, applied) = {
            let mut s = self.saved.borrow_mut();
            (s.lease.reclaim(open), s.draining, s.lease.applied)
        };
        if released > 0 {
            self.save().await?;
            self.retire_soon().await;
        }
        Ok(Reclaimed {
            lease: crate::placement::lease::Returned {
                released,
                open,
                draining,
                applied,
                quiet,
            },
            report: self.report(),
        })
    }
}
