//! Business events to the upstream, lifecycle hooks, and the built-in `update-usage-limits`
//! (docs/upstream.md).
//!
//! A socket's business events are queued and sent one at a time, so they reach the upstream
//! in the order sent; different sockets' go concurrently. The ack goes back to the sender,
//! the deliveries across the user's shards. A slow or failing upstream never closes a socket:
//! the sender gets an error ack, and the shard refuses new events at once past
//! `UPSTREAM_MAX_IN_FLIGHT` unanswered ones.

use std::collections::VecDeque;

use serde_json::value::RawValue;
use worker::{console_error, WebSocket};

use super::ConnectionManager;
use crate::config::Config;
use crate::object_api::UsageSet;
use crate::placement;
use crate::protocol::SocketMeta;
use crate::routing::envelope;
use crate::runtime;
use crate::upstream::hooks::{self, Hook};
use crate::upstream::{self, Failure, QueuedEvent, SenderInfo};
use observability::metrics::UpstreamResult;

fn result_of(f: &Failure) -> UpstreamResult {
    match f {
        Failure::Timeout(_) => UpstreamResult::Timeout,
        Failure::Error(_) => UpstreamResult::Error,
        Failure::Busy(_) => UpstreamResult::Busy,
    }
}

impl ConnectionManager {
    /// Sends a business event upstream behind the socket's earlier ones. The first caller
    /// for a socket drains its queue; later ones only enqueue.
    pub(super) async fn to_upstream(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        meta: &SocketMeta,
        b: QueuedEvent,
    ) {
        let max = cfg.upstream.max_in_flight;
        if self.upstream_pending.get() >= max {
            let f = Failure::Busy(max);
            if let Some(a) = &b.ack_id {
                let _ = ws.send_with_str(envelope::ack_frame(a, &f.ack()));
            }
            self.observe_upstream(&b.label, UpstreamResult::Busy, None)
                .await;
            return;
        }
        self.upstream_pending.set(self.upstream_pending.get() + 1);
        {
            let mut queues = self.upstream_queues.borrow_mut();
            if let Some(q) = queues.get_mut(&meta.connection_id) {
                q.push_back(b);
                return;
            }
            queues.insert(meta.connection_id.clone(), VecDeque::new());
        }
        let mut next = Some(b);
        while let Some(b) = next {
            self.send_business(cfg, ws, meta, b).await;
            self.upstream_pending
                .set(self.upstream_pending.get().saturating_sub(1));
            next = self
                .upstream_queues
                .borrow_mut()
                .get_mut(&meta.connection_id)
                .and_then(VecDeque::pop_front);
        }
        // No await since the queue was found empty: nothing was queued in between.
        self.upstream_queues
            .borrow_mut()
            .remove(&meta.connection_id);
    }

    async fn send_business(&self, cfg: &Config, ws: &WebSocket, meta: &SocketMeta, b: QueuedEvent) {
        let id = format!(
            "evt_{}",
            crate::protocol::ids::connection_id(runtime::random16())
        );
        let body = upstream::event_request(
            &id,
            &b.event,
            b.data.as_deref(),
            b.ack_id.as_deref(),
            &SenderInfo::of(meta, &self.name()),
            runtime::now_ms(),
        );
        let started = runtime::now_ms();
        let answered = match runtime::upstream_post(&self.env, &cfg.upstream, &body).await {
            Ok((s, text)) if (200..300).contains(&s) => {
                upstream::parse_answer(&text).map_err(|e| Failure::Error(e.to_string()))
            }
            Ok((s, text)) => Err(Failure::Error(format!(
                "status {s}: {}",
                crate::protocol::truncate(&text, 100)
            ))),
            Err(f) => Err(f),
        };
        let ms = runtime::now_ms().saturating_sub(started) as f64;
        match answered {
            Ok(a) => {
                if let (Some(id), Some(ack)) = (&b.ack_id, &a.ack) {
                    let _ = ws.send_with_str(envelope::ack_frame(id, ack));
                }
                if !a.deliveries.is_empty() {
                    let view = self.current_view(super::presence::Want::Cached).await;
                    // In the upstream's order: an update after the ephemeral it follows.
                    for d in &a.deliveries {
                        self.deliver_everywhere(d, &view).await;
                    }
                }
                self.observe_upstream(&b.label, UpstreamResult::Ok, Some(ms))
                    .await;
            }
            Err(f) => {
                console_error!("upstream {} failed: {f:?}", b.event);
                if let Some(a) = &b.ack_id {
                    let _ = ws.send_with_str(envelope::ack_frame(a, &f.ack()));
                }
                self.observe_upstream(&b.label, result_of(&f), Some(ms))
                    .await;
            }
        }
    }

    /// `update-usage-limits`: validated, then stored once per user in the home.
    pub(super) async fn usage_limits(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        data: Option<&RawValue>,
        ack_id: Option<&str>,
    ) {
        let value: serde_json::Value = data
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        let invalid = if !value.get("limitsAvailable").is_some_and(|v| v.is_boolean()) {
            Some("Invalid payload: limitsAvailable must be boolean")
        } else if !value.get("weeklyLimits").is_some_and(|v| v.is_array()) {
            Some("Invalid payload: weeklyLimits must be array")
        } else {
            None
        };
        let ack = match invalid {
            Some(error) => serde_json::json!({"success": false, "error": error}),
            None => match self.store_usage(meta, value).await {
                Ok(()) => serde_json::json!({"success": true}),
                Err(e) => {
                    console_error!("usage limits not stored: {e}");
                    serde_json::json!({"success": false, "error": "could not store the usage limits; retry"})
                }
            },
        };
        if let Some(a) = ack_id {
            let _ = ws.send_with_str(envelope::ack_frame(a, &ack.to_string()));
        }
    }

    /// Stores the user's usage limits at its home (here, or one call away).
    async fn store_usage(&self, meta: &SocketMeta, value: serde_json::Value) -> worker::Result<()> {
        if self.is_home() {
            return self.home.set_usage_limits(value).await;
        }
        let home = placement::home_name(&meta.user_id);
        let stub = runtime::object(&self.env, crate::object_api::SHARD_BINDING, &home)?;
        runtime::ask(&stub, Some(&home), &UsageSet(value))
            .await
            .map(|_| ())
    }

    /// Stores lifecycle hooks (within the outbox's bound) and arms the alarm to send them.
    pub(super) async fn post_hooks(&self, cfg: &Config, hooks: Vec<Hook>) {
        if !cfg.upstream.posts_hooks() || hooks.is_empty() {
            return;
        }
        self.outbox
            .enqueue(&self.state.storage(), cfg.upstream.hook_bounds, &hooks)
            .await;
        self.record_hook_news().await;
        if let Err(e) = self.rearm().await {
            console_error!("could not schedule the hooks: {e}");
        }
    }

    pub(super) fn connected_hook(&self, meta: &SocketMeta) -> Hook {
        hooks::connected(&SenderInfo::of(meta, &self.name()), runtime::now_ms())
    }

    pub(super) fn disconnected_hook(&self, meta: &SocketMeta, code: u16) -> Hook {
        hooks::disconnected(&SenderInfo::of(meta, &self.name()), code, runtime::now_ms())
    }

    /// The alarm's part: sends the due hooks in the background; when that ends it re-arms
    /// the alarm, which records how it went.
    pub(super) fn flush_hooks(&self, cfg: &Config) {
        let (clock, state) = (self.clock.clone(), self.state.clone());
        self.outbox.start_flush(
            &self.state,
            &self.env,
            &cfg.upstream,
            move |at| async move {
                if let Err(e) = clock.arm(&state, at).await {
                    console_error!("could not schedule the hooks: {e}");
                }
            },
        );
    }

    /// Counts the outbox's attempts and lost hooks under their kind (`hook:connected`, ...).
    pub(super) async fn record_hook_news(&self) {
        let news = self.outbox.take_news();
        if news.is_empty() {
            return;
        }
        for a in news.attempts {
            self.observe_upstream(&format!("hook:{}", a.kind), a.result, Some(a.ms))
                .await;
        }
        for l in news.lost {
            self.observe_hook_loss(&format!("hook:{}", l.kind), l.why)
                .await;
        }
    }
}
