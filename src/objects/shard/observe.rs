//! What a shard measures about itself and reports to its user's home.
//!
//! Everything is recorded twice: into the full observations (the shard's own recent
//! latency, which admission reads) and into a pending delta that goes upward every few
//! seconds (riding a report, or straight into the home's pending metrics at the home). Both
//! live in memory: a shard is evicted only after seconds of idleness, by which time the
//! delta is sent.

use worker::console_error;

use super::observer::REPORT_EVERY_MS;
use super::ConnectionManager;
use crate::object_api::ReportedMetrics;
use crate::runtime;
use observability::metrics::{Outcome, Series, ShardGauges};

impl ConnectionManager {
    fn tier(&self) -> String {
        self.saved.borrow().tier.clone()
    }

    /// Records a connect outcome; schedules a report if none is due.
    pub(super) async fn observe_outcome(&self, outcome: Outcome) {
        let now = runtime::now_ms();
        let tier = self.tier();
        {
            let mut o = self.observer.borrow_mut();
            o.full.record_outcome(now, &tier, outcome);
            o.pending.record_outcome(now, &tier, outcome);
        }
        self.metrics_soon(now).await;
    }

    pub(super) async fn observe_latency(&self, series: Series, since_ms: u64) {
        let now = runtime::now_ms();
        let tier = self.tier();
        let ms = now.saturating_sub(since_ms) as f64;
        {
            let mut o = self.observer.borrow_mut();
            o.full.record_latency(now, &tier, series, ms);
            o.pending.record_latency(now, &tier, series, ms);
        }
        self.metrics_soon(now).await;
    }

    /// An upstream call: its result and latency per event (or hook kind).
    pub(super) async fn observe_upstream(
        &self,
        label: &str,
        result: observability::metrics::UpstreamResult,
        ms: Option<f64>,
    ) {
        let now = runtime::now_ms();
        let tier = self.tier();
        {
            let mut o = self.observer.borrow_mut();
            o.full.record_upstream(now, &tier, label, result, ms);
            o.pending.record_upstream(now, &tier, label, result, ms);
        }
        self.metrics_soon(now).await;
    }

    /// A lifecycle hook that never reached the upstream (coalesced, over the bound, expired).
    pub(super) async fn observe_hook_loss(
        &self,
        label: &str,
        why: observability::metrics::HookLoss,
    ) {
        let now = runtime::now_ms();
        let tier = self.tier();
        {
            let mut o = self.observer.borrow_mut();
            o.full.record_hook_loss(now, &tier, label, why);
            o.pending.record_hook_loss(now, &tier, label, why);
        }
        self.metrics_soon(now).await;
    }

    /// The open-socket count changed (a close): the home's gauges are stale.
    pub(super) async fn observe_gauges(&self) {
        self.metrics_soon(runtime::now_ms()).await;
    }

    /// Schedules the next step upward unless one is due: another shard's metrics ride its
    /// report within `REPORT_EVERY_MS`; the home takes its own at its next registry push.
    async fn metrics_soon(&self, now: u64) {
        if self.is_home() {
            self.home.metrics_changed();
            if let Ok(cfg) = runtime::config(&self.env) {
                self.home.schedule_push(&cfg).await;
            }
            return;
        }
        if self.observer.borrow().report_at.is_some() {
            return;
        }
        self.observer.borrow_mut().report_at = Some(now + REPORT_EVERY_MS);
        if let Err(e) = self.rearm().await {
            console_error!("could not schedule a metrics report: {e}");
        }
    }

    /// The pending delta and the current gauges, for the home (nothing when there is no
    /// news: no observation and the same open count as the last time).
    pub(super) fn take_metrics(&self) -> Option<ReportedMetrics> {
        let now = runtime::now_ms();
        let (user, shard, tier, capacity_rejected) = {
            let s = self.saved.borrow();
            (s.user.clone(), s.name.clone(), s.tier.clone(), s.rejected)
        };
        let pending = {
            let mut o = self.observer.borrow_mut();
            o.report_at = None;
            o.full.prune(now);
            std::mem::take(&mut o.pending)
        };
        let open = u64::from(self.open_count());
        let unchanged = self.observer.borrow().reported_connections == Some(open);
        if user.is_empty() || pending.is_empty() && unchanged {
            return None;
        }
        self.observer.borrow_mut().reported_connections = Some(open);
        let stats = self.stats();
        let policy = runtime::config(&self.env)
            .map(|c| c.policy_name.clone())
            .unwrap_or_default();
        let gauges = ShardGauges {
            shard,
            tier,
            policy,
            connections: stats.connections,
            rejected: capacity_rejected,
            oldest_connection_ms: stats.oldest_connection.map(|t| now.saturating_sub(t)),
            memory_bytes: stats.memory_usage,
            events: stats.events,
            peak_events_per_second: stats.peak_events_per_second,
            draining: stats.draining,
            ..Default::default()
        }
        .with_recent(&self.observer.borrow().full, now);
        Some(ReportedMetrics {
            gauges,
            observed: pending,
        })
    }
}
