//! The per-tier SLO report (`GET /admin/slo`) and the global stats (`GET /admin/stats`), as
//! pure functions of a [`GlobalMetrics`] snapshot, the configured tiers and `now_ms`.
//!
//! Windows: short = the last 5 minutes (1-minute slots), long = the last hour (5-minute
//! slots); see `metrics` for how a window maps onto slots. Availability is
//! successes / (successes + failures + 503 refusals): tier-limit 429s are policy and stay out.
//! Burn rate is the error ratio over a window divided by the error budget ratio
//! (1 - objective); 1.0 spends exactly the budget. Status follows the capacity guide's alert
//! rules plus the tiers' own objectives; every rule that fires is listed as a reason, and the
//! same thresholds drive `ops/prometheus/alerts.yml`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::metrics::{ByTier, GlobalMetrics, Series, TierMetrics, LONG_WINDOW_MS, SHORT_WINDOW_MS};
use crate::tier::tier_order;
use crate::tier::Tier;

/// Guide: `connection_rejection_rate > 5%` warning, `> 20%` critical.
pub const REJECTION_WARNING: f64 = 0.05;
pub const REJECTION_CRITICAL: f64 = 0.20;
/// Guide: `ws_message_latency_p95 > 500ms` warning, `> 2000ms` critical.
pub const MESSAGE_P95_WARNING_MS: f64 = 500.0;
pub const MESSAGE_P95_CRITICAL_MS: f64 = 2000.0;
/// Guide: `do_response_time_p95 > 1000ms` warning.
pub const DO_RESPONSE_P95_WARNING_MS: f64 = 1000.0;
/// Guide: `do_connections_total > 400` warning.
pub const DO_CONNECTIONS_WARNING: u64 = 400;
/// Multi-window burn-rate thresholds (Google SRE workbook): 14.4 spends 2 % of a 30-day
/// budget in an hour; 6 spends 5 % in 6 hours. Both windows must exceed the rate, so a
/// short spike that the hour has not confirmed does not fire, and a recovered one stops.
pub const BURN_CRITICAL: f64 = 14.4;
pub const BURN_WARNING: f64 = 6.0;
/// Connects a window needs before a ratio rule (rejection, burn, availability) counts: one
/// failure among three connects is not a 33 % outage.
pub const MIN_EVENTS: u64 = 10;
/// Samples a window needs before a p95 rule counts.
pub const MIN_LATENCY_SAMPLES: u64 = 10;

/// A tier's (or the report's) state, worst first when compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

/// One rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    /// Stable rule id, the same as the alert's `rule` label in `ops/prometheus/alerts.yml`.
    pub rule: String,
    pub severity: Status,
    pub value: f64,
    pub threshold: f64,
    pub window_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySlo {
    /// The tier's objective: message latency p95 below this.
    pub target_p95_ms: u32,
    /// `ws_message_latency` p95 over the short window (estimate, see metrics).
    pub p95_ms: Option<f64>,
    /// The same over the long window.
    pub p95_ms_long: Option<f64>,
    /// Messages behind `p95_ms`.
    pub samples: u64,
    /// `p95_ms <= target`; `None` below [`MIN_LATENCY_SAMPLES`].
    pub met: Option<bool>,
    /// Short-window p95 of the other series, for context.
    pub connect_p95_ms: Option<f64>,
    pub broadcast_p95_ms: Option<f64>,
    pub do_response_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailabilitySlo {
    /// The tier's objective in percent.
    pub target_percent: f64,
    /// Over the long window; `None` without connects.
    pub percent: Option<f64>,
    /// Over the short window.
    pub percent_short: Option<f64>,
    /// `percent >= target`; `None` below [`MIN_EVENTS`] connects.
    pub met: Option<bool>,
    /// Long-window counts.
    pub successes: u64,
    pub failures: u64,
    pub rejected_unavailable: u64,
    /// Shown, never counted against availability.
    pub rejected_tier_limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBudget {
    pub window_ms: u64,
    /// Failed connects the objective allows over the window: attempts x (1 - objective).
    pub allowed: f64,
    /// Failed connects (failures + 503 refusals) over the window.
    pub spent: u64,
    /// 1 - spent / allowed: 1 untouched, 0 exhausted, negative overspent. `None` without
    /// connects.
    pub remaining: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurnRate {
    /// Error ratio / (1 - objective) over the short and the long window.
    pub short: Option<f64>,
    pub long: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierSlo {
    pub tier: String,
    /// 0 = lowest tier (shed first).
    pub rank: usize,
    pub limit: u32,
    pub status: Status,
    pub reasons: Vec<Reason>,
    pub latency: LatencySlo,
    pub availability: AvailabilitySlo,
    pub error_budget: ErrorBudget,
    pub burn_rate: BurnRate,
    /// Shard capacity refusals / (refusals + successes) over the short window.
    pub rejection_rate: Option<f64>,
    /// Open sockets of the tier's users, and the fullest shard among them.
    pub connections: u64,
    pub max_connections_per_do: u64,
    pub users: u64,
    /// Upstream calls of the tier's users over the short window, per event.
    pub upstream: Vec<UpstreamSlo>,
}

/// One upstream event over the short window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSlo {
    pub event: String,
    pub calls: u64,
    pub failures: u64,
    pub failure_rate: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// `GET /admin/slo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SloReport {
    pub generated_at: u64,
    pub short_window_ms: u64,
    pub long_window_ms: u64,
    /// The worst tier status.
    pub status: Status,
    /// Configured tiers, lowest first.
    pub tiers: Vec<TierSlo>,
}

/// Gauges of one tier, from the users' shards.
#[derive(Default)]
struct TierGauges {
    connections: u64,
    max_per_do: u64,
    shards: u64,
    users: BTreeSet<String>,
}

fn gauges_by_tier(global: &GlobalMetrics) -> BTreeMap<String, TierGauges> {
    let mut out: BTreeMap<String, TierGauges> = BTreeMap::new();
    for (u, s) in global.shards() {
        let g = out.entry(s.tier.clone()).or_default();
        g.connections = g.connections.saturating_add(s.connections);
        g.max_per_do = g.max_per_do.max(s.connections);
        g.shards = g.shards.saturating_add(1);
        g.users.insert(u.user_id.clone());
    }
    out
}

/// Builds the SLO report for every configured tier.
pub fn slo_report(
    global: &GlobalMetrics,
    tiers: &BTreeMap<String, Tier>,
    now_ms: u64,
) -> SloReport {
    let short = global.window(now_ms, SHORT_WINDOW_MS);
    let long = global.window(now_ms, LONG_WINDOW_MS);
    let gauges = gauges_by_tier(global);
    let empty = TierMetrics::default();
    let none = TierGauges::default();
    let reports: Vec<TierSlo> = tier_order(tiers)
        .into_iter()
        .enumerate()
        .map(|(rank, (name, tier))| {
            tier_slo(
                name,
                rank,
                tier,
                short.get(name).unwrap_or(&empty),
                long.get(name).unwrap_or(&empty),
                gauges.get(name).unwrap_or(&none),
            )
        })
        .collect();
    SloReport {
        generated_at: now_ms,
        short_window_ms: SHORT_WINDOW_MS,
        long_window_ms: LONG_WINDOW_MS,
        status: reports.iter().map(|t| t.status).max().unwrap_or(Status::Ok),
        tiers: reports,
    }
}

fn tier_slo(
    name: &str,
    rank: usize,
    tier: &Tier,
    short: &TierMetrics,
    long: &TierMetrics,
    gauges: &TierGauges,
) -> TierSlo {
    let budget_ratio = (1.0 - tier.availability / 100.0).max(1e-9);
    let burn = |m: &TierMetrics| m.counts.error_ratio().map(|e| e / budget_ratio);
    let mut t = TierSlo {
        tier: name.to_owned(),
        rank,
        limit: tier.limit,
        status: Status::Ok,
        reasons: Vec::new(),
        latency: latency_slo(tier, short, long),
        availability: availability_slo(tier, short, long),
        error_budget: error_budget(long, budget_ratio),
        burn_rate: BurnRate {
            short: burn(short),
            long: burn(long),
        },
        rejection_rate: short.counts.rejection_rate(),
        connections: gauges.connections,
        max_connections_per_do: gauges.max_per_do,
        users: gauges.users.len() as u64,
        upstream: upstream_slos(short),
    };
    t.reasons = reasons(&t, tier, short, gauges);
    t.status = t
        .reasons
        .iter()
        .map(|r| r.severity)
        .max()
        .unwrap_or(Status::Ok);
    t
}

fn latency_slo(tier: &Tier, short: &TierMetrics, long: &TierMetrics) -> LatencySlo {
    let p95 = |m: &TierMetrics, s: Series| m.latency.get(s).quantile(0.95);
    let msg = short.latency.get(Series::MessageLatency);
    let samples = msg.count();
    let message_p95 = msg.quantile(0.95);
    LatencySlo {
        target_p95_ms: tier.latency_p95_ms,
        p95_ms: message_p95,
        p95_ms_long: p95(long, Series::MessageLatency),
        samples,
        met: message_p95
            .filter(|_| samples >= MIN_LATENCY_SAMPLES)
            .map(|p| p <= f64::from(tier.latency_p95_ms)),
        connect_p95_ms: p95(short, Series::ConnectAdmission),
        broadcast_p95_ms: p95(short, Series::BroadcastDelivery),
        do_response_p95_ms: p95(short, Series::DoResponse),
    }
}

fn availability_slo(tier: &Tier, short: &TierMetrics, long: &TierMetrics) -> AvailabilitySlo {
    let lc = &long.counts;
    AvailabilitySlo {
        target_percent: tier.availability,
        percent: lc.availability().map(|a| a * 100.0),
        percent_short: short.counts.availability().map(|a| a * 100.0),
        met: lc
            .availability()
            .filter(|_| lc.attempts() >= MIN_EVENTS)
            .map(|a| a * 100.0 >= tier.availability),
        successes: lc.successes,
        failures: lc.failures,
        rejected_unavailable: lc.rejected_unavailable,
        rejected_tier_limit: lc.rejected_tier_limit,
    }
}

fn error_budget(long: &TierMetrics, budget_ratio: f64) -> ErrorBudget {
    let lc = &long.counts;
    let allowed = lc.attempts() as f64 * budget_ratio;
    ErrorBudget {
        window_ms: LONG_WINDOW_MS,
        allowed,
        spent: lc.bad(),
        remaining: (lc.attempts() > 0).then(|| 1.0 - lc.bad() as f64 / allowed),
    }
}

fn upstream_slos(short: &TierMetrics) -> Vec<UpstreamSlo> {
    short
        .upstream
        .iter()
        .map(|(event, e)| UpstreamSlo {
            event: event.clone(),
            calls: e.calls(),
            failures: e.failures(),
            failure_rate: (e.calls() > 0).then(|| e.failures() as f64 / e.calls() as f64),
            p95_ms: e.latency.quantile(0.95),
        })
        .collect()
}

/// The rules that fire for a tier, in the order the report lists them.
fn reasons(t: &TierSlo, tier: &Tier, short: &TierMetrics, gauges: &TierGauges) -> Vec<Reason> {
    let mut r = Reasons::default();
    let refusal_events = short
        .counts
        .shard_refusals
        .saturating_add(short.counts.successes);
    if let Some(v) = t.rejection_rate.filter(|_| refusal_events >= MIN_EVENTS) {
        r.first_over("rejection_rate", v, REJECTION, SHORT_WINDOW_MS, |th| {
            format!(
                "shards refused {:.1} % of connects over 5 min (> {:.0} %)",
                v * 100.0,
                th * 100.0
            )
        });
    }
    latency_reasons(&mut r, t, short);
    if gauges.max_per_do > DO_CONNECTIONS_WARNING {
        r.fire(
            "do_connections",
            Status::Warning,
            (gauges.max_per_do as f64, DO_CONNECTIONS_WARNING as f64, 0),
            format!(
                "a shard holds {} connections (> {DO_CONNECTIONS_WARNING})",
                gauges.max_per_do
            ),
        );
    }
    if short.counts.attempts() >= MIN_EVENTS {
        if let (Some(s), Some(l)) = (t.burn_rate.short, t.burn_rate.long) {
            // Both windows over the threshold: the smaller is the value that crossed it.
            r.first_over("availability_burn", s.min(l), BURN, SHORT_WINDOW_MS, |th| {
                format!(
                    "error budget burning at {s:.1}x (5 min) and {l:.1}x (1 h), both over {th}x"
                )
            });
        }
    }
    // The upstream's failures reach senders as error acks: the same thresholds as the
    // guide's connection rejection rate.
    for u in &t.upstream {
        if let Some(v) = u.failure_rate.filter(|_| u.calls >= MIN_EVENTS) {
            r.first_over(
                "upstream_failure_rate",
                v,
                REJECTION,
                SHORT_WINDOW_MS,
                |th| {
                    format!(
                        "{:.1} % of `{}` upstream calls failed over 5 min (> {:.0} %)",
                        v * 100.0,
                        u.event,
                        th * 100.0
                    )
                },
            );
        }
    }
    if let (Some(false), Some(p)) = (t.availability.met, t.availability.percent) {
        r.fire(
            "availability_slo",
            Status::Warning,
            (p, tier.availability, LONG_WINDOW_MS),
            format!(
                "availability {p:.3} % over 1 h is below the {} objective ({} %): error budget exhausted",
                t.tier, tier.availability
            ),
        );
    }
    r.0
}

/// The message latency against the guide's thresholds and the tier's objective, and the
/// Durable Object response time.
fn latency_reasons(r: &mut Reasons, t: &TierSlo, short: &TierMetrics) {
    let enough = t.latency.samples >= MIN_LATENCY_SAMPLES;
    if let Some(p) = t.latency.p95_ms.filter(|_| enough) {
        r.first_over(
            "message_latency_p95",
            p,
            MESSAGE_P95,
            SHORT_WINDOW_MS,
            |th| format!("ws_message_latency p95 {p:.1} ms over 5 min (> {th} ms)"),
        );
        let target = f64::from(t.latency.target_p95_ms);
        if p > target {
            r.fire(
                "latency_slo",
                Status::Warning,
                (p, target, SHORT_WINDOW_MS),
                format!(
                    "ws_message_latency p95 {p:.1} ms over 5 min misses the {} objective ({target} ms)",
                    t.tier
                ),
            );
        }
    }
    let dor = short.latency.get(Series::DoResponse);
    if let Some(p) = dor
        .quantile(0.95)
        .filter(|_| dor.count() >= MIN_LATENCY_SAMPLES)
    {
        if p > DO_RESPONSE_P95_WARNING_MS {
            r.fire(
                "do_response_p95",
                Status::Warning,
                (p, DO_RESPONSE_P95_WARNING_MS, SHORT_WINDOW_MS),
                format!(
                    "do_response_time p95 {p:.1} ms over 5 min (> {DO_RESPONSE_P95_WARNING_MS} ms)"
                ),
            );
        }
    }
}

/// Thresholds of a two-level rule, the critical one first.
const REJECTION: [(f64, Status); 2] = [
    (REJECTION_CRITICAL, Status::Critical),
    (REJECTION_WARNING, Status::Warning),
];
const MESSAGE_P95: [(f64, Status); 2] = [
    (MESSAGE_P95_CRITICAL_MS, Status::Critical),
    (MESSAGE_P95_WARNING_MS, Status::Warning),
];
const BURN: [(f64, Status); 2] = [
    (BURN_CRITICAL, Status::Critical),
    (BURN_WARNING, Status::Warning),
];

/// The reasons a tier's status is what it is.
#[derive(Default)]
struct Reasons(Vec<Reason>);

impl Reasons {
    /// A rule fired: `(value, threshold, window_ms)`.
    fn fire(&mut self, rule: &str, severity: Status, at: (f64, f64, u64), message: String) {
        let (value, threshold, window_ms) = at;
        self.0.push(Reason {
            rule: rule.to_owned(),
            severity,
            value,
            threshold,
            window_ms,
            message,
        });
    }

    /// Fires the first (most severe) of `levels` that `value` is over, with its message.
    fn first_over(
        &mut self,
        rule: &str,
        value: f64,
        levels: [(f64, Status); 2],
        window_ms: u64,
        message: impl Fn(f64) -> String,
    ) {
        if let Some((threshold, severity)) = levels.into_iter().find(|(th, _)| value > *th) {
            self.fire(
                rule,
                severity,
                (value, threshold, window_ms),
                message(threshold),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Admin stats

/// `GET /admin/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminStats {
    pub generated_at: u64,
    pub totals: Totals,
    /// Configured tiers lowest first, then any other tier seen in the data.
    pub tiers: Vec<TierTotals>,
    /// The users with the most open connections, most first (ties by id).
    pub top_users: Vec<UserRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub users: u64,
    pub shards: u64,
    pub connections: u64,
    /// Estimate (see `do_memory_usage_bytes`).
    pub memory_bytes: u64,
    /// Lifetime shard capacity refusals (`do_connections_rejected`).
    pub shard_refusals: u64,
    /// Lifetime connect outcomes (`ws_connection_success`, `ws_connection_errors`).
    pub successes: u64,
    pub failures: u64,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
    /// Age of the oldest open socket anywhere.
    pub oldest_connection_ms: Option<u64>,
    pub max_connections_per_do: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierTotals {
    pub tier: String,
    pub users: u64,
    pub shards: u64,
    pub connections: u64,
    pub max_connections_per_do: u64,
    pub successes: u64,
    pub failures: u64,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRow {
    pub user_id: String,
    pub tier: String,
    pub policy: String,
    pub connections: u64,
    pub shards: u64,
    pub max_shard_connections: u64,
    /// max/mean connections over the user's shards holding sockets (1.0 = even).
    pub imbalance: f64,
    /// Lifetime shard capacity refusals.
    pub rejected: u64,
    pub oldest_connection_ms: Option<u64>,
    pub memory_bytes: u64,
}

/// Builds the admin stats with the `top` users by open connections.
pub fn admin_stats(
    global: &GlobalMetrics,
    tiers: &BTreeMap<String, Tier>,
    now_ms: u64,
    top: usize,
) -> AdminStats {
    let lifetime: ByTier = global.totals();
    let gauges = gauges_by_tier(global);
    AdminStats {
        generated_at: now_ms,
        totals: totals(global, &lifetime),
        tiers: tier_totals(tiers, &lifetime, &gauges),
        top_users: top_users(global, top),
    }
}

fn totals(global: &GlobalMetrics, lifetime: &ByTier) -> Totals {
    let mut totals = Totals {
        users: global.users.len() as u64,
        ..Default::default()
    };
    for (_, s) in global.shards() {
        totals.shards = totals.shards.saturating_add(1);
        totals.connections = totals.connections.saturating_add(s.connections);
        totals.memory_bytes = totals.memory_bytes.saturating_add(s.memory_bytes);
        totals.shard_refusals = totals.shard_refusals.saturating_add(s.rejected);
        totals.oldest_connection_ms = totals.oldest_connection_ms.max(s.oldest_connection_ms);
        totals.max_connections_per_do = totals.max_connections_per_do.max(s.connections);
    }
    let all = lifetime.all_tiers().counts;
    totals.successes = all.successes;
    totals.failures = all.failures;
    totals.rejected_tier_limit = all.rejected_tier_limit;
    totals.rejected_unavailable = all.rejected_unavailable;
    totals
}

/// The configured tiers, lowest first, then any other tier seen.
fn tier_totals(
    tiers: &BTreeMap<String, Tier>,
    lifetime: &ByTier,
    gauges: &BTreeMap<String, TierGauges>,
) -> Vec<TierTotals> {
    let mut names: Vec<String> = tier_order(tiers)
        .into_iter()
        .map(|(n, _)| n.to_owned())
        .collect();
    let extra: BTreeSet<&str> = lifetime
        .iter()
        .map(|(n, _)| n)
        .chain(gauges.keys().map(String::as_str))
        .filter(|n| !tiers.contains_key(*n))
        .collect();
    names.extend(extra.into_iter().map(str::to_owned));
    names
        .into_iter()
        .map(|tier| {
            let g = gauges.get(&tier);
            let c = lifetime.get(&tier).map(|m| m.counts).unwrap_or_default();
            TierTotals {
                users: g.map_or(0, |g| g.users.len() as u64),
                shards: g.map_or(0, |g| g.shards),
                connections: g.map_or(0, |g| g.connections),
                max_connections_per_do: g.map_or(0, |g| g.max_per_do),
                successes: c.successes,
                failures: c.failures,
                rejected_tier_limit: c.rejected_tier_limit,
                rejected_unavailable: c.rejected_unavailable,
                tier,
            }
        })
        .collect()
}

/// The `top` users by open connections, then by id.
fn top_users(global: &GlobalMetrics, top: usize) -> Vec<UserRow> {
    let mut ranked: Vec<(u64, &crate::metrics::UserMetrics)> = global
        .users
        .values()
        .map(|u| (u.connections(), u))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.user_id.cmp(&b.1.user_id)));
    ranked
        .into_iter()
        .take(top)
        .map(|(connections, u)| {
            let active = u.shards.iter().filter(|s| s.connections > 0).count();
            let max = u.max_shard_connections();
            UserRow {
                user_id: u.user_id.clone(),
                tier: u.tier.clone(),
                policy: u.policy.clone(),
                connections,
                shards: u.shards.len() as u64,
                max_shard_connections: max,
                imbalance: if connections == 0 {
                    0.0
                } else {
                    max as f64 / (connections as f64 / active as f64)
                },
                rejected: u.rejected(),
                oldest_connection_ms: u.oldest_connection_ms(),
                memory_bytes: u.memory_bytes(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Outcome, ShardGauges, UserMetrics};

    const MIN: u64 = 60_000;
    const NOW: u64 = 30_000_000 * MIN + 30_000;

    fn tiers() -> BTreeMap<String, Tier> {
        serde_json::from_str(crate::tier::DEFAULT_TIERS).unwrap()
    }

    /// A user with one shard of `conns` sockets.
    fn user(id: &str, tier: &str, conns: u64) -> UserMetrics {
        let mut u = UserMetrics::new(id, tier, "single");
        u.set_gauges(ShardGauges {
            shard: format!("cm:{id}"),
            tier: tier.into(),
            policy: "single".into(),
            connections: conns,
            rejected: 2,
            oldest_connection_ms: Some(conns * 10),
            memory_bytes: conns * 4096,
            ..Default::default()
        });
        u
    }

    fn record(u: &mut UserMetrics, at: u64, outcome: Outcome, n: usize) {
        let tier = u.tier.clone();
        for _ in 0..n {
            u.observed.record_outcome(at, &tier, outcome);
        }
    }

    fn latency(u: &mut UserMetrics, at: u64, series: Series, ms: f64, n: usize) {
        let tier = u.tier.clone();
        for _ in 0..n {
            u.observed.record_latency(at, &tier, series, ms);
        }
    }

    fn report(users: Vec<UserMetrics>) -> SloReport {
        let mut g = GlobalMetrics::default();
        for u in &users {
            g.add_user(u);
        }
        slo_report(&g, &tiers(), NOW)
    }

    fn tier<'a>(r: &'a SloReport, name: &str) -> &'a TierSlo {
        r.tiers.iter().find(|t| t.tier == name).unwrap()
    }

    fn rules(t: &TierSlo) -> Vec<(&str, Status)> {
        t.reasons
            .iter()
            .map(|r| (r.rule.as_str(), r.severity))
            .collect()
    }

    #[test]
    fn healthy_tier_reports_targets_and_ok() {
        let mut u = user("alice", "pro", 50);
        record(&mut u, NOW - 1000, Outcome::Success, 1000);
        record(&mut u, NOW - 1000, Outcome::TierLimit, 500);
        record(&mut u, NOW - 30 * MIN, Outcome::Failure, 1);
        latency(&mut u, NOW - 1000, Series::MessageLatency, 20.0, 100);
        let r = report(vec![u]);
        assert_eq!(r.status, Status::Ok);
        let names: Vec<&str> = r.tiers.iter().map(|t| t.tier.as_str()).collect();
        assert_eq!(names, vec!["free", "pro", "enterprise"]);
        let t = tier(&r, "pro");
        assert_eq!(t.status, Status::Ok, "{:?}", t.reasons);
        assert_eq!(t.rank, 1);
        assert_eq!(t.limit, 100);
        assert_eq!(t.latency.target_p95_ms, 200);
        assert_eq!(t.latency.samples, 100);
        assert_eq!(t.latency.met, Some(true));
        let p95 = t.latency.p95_ms.unwrap();
        assert!(p95 > 19.2 && p95 <= 25.6, "{p95}");
        // 1000 ok + 1 failure; the 500 tier-limit refusals are not in availability.
        assert_eq!(t.availability.successes, 1000);
        assert_eq!(t.availability.rejected_tier_limit, 500);
        let a = t.availability.percent.unwrap();
        assert!((a - 100.0 * 1000.0 / 1001.0).abs() < 1e-9, "{a}");
        assert_eq!(t.availability.met, Some(true));
        assert_eq!(t.availability.percent_short, Some(100.0));
        // Budget: 1001 x 0.1 % = 1.001 allowed, 1 spent.
        assert!((t.error_budget.allowed - 1.001).abs() < 1e-9);
        assert_eq!(t.error_budget.spent, 1);
        assert!((t.error_budget.remaining.unwrap() - (1.0 - 1.0 / 1.001)).abs() < 1e-9);
        assert_eq!(t.burn_rate.short, Some(0.0));
        let long = t.burn_rate.long.unwrap();
        assert!((long - (1.0 / 1001.0) / 0.001).abs() < 1e-6, "{long}");
        assert_eq!(t.connections, 50);
        assert_eq!(t.users, 1);
        // A tier with no data: nothing known, nothing fires.
        let f = tier(&r, "free");
        assert_eq!(f.status, Status::Ok);
        assert_eq!(f.availability.percent, None);
        assert_eq!(f.error_budget.remaining, None);
        assert_eq!(f.latency.met, None);
    }

    #[test]
    fn rejection_rate_thresholds() {
        let case = |refused: usize, ok: usize| {
            let mut u = user("a", "free", 1);
            record(&mut u, NOW, Outcome::ShardRefused, refused);
            record(&mut u, NOW, Outcome::Success, ok);
            let r = report(vec![u]);
            tier(&r, "free").clone()
        };
        // Exactly 5 %: not over.
        let t = case(5, 95);
        assert_eq!(t.rejection_rate, Some(0.05));
        assert!(rules(&t).is_empty(), "{:?}", t.reasons);
        let t = case(6, 94);
        assert_eq!(rules(&t), vec![("rejection_rate", Status::Warning)]);
        let t = case(21, 79);
        assert_eq!(rules(&t), vec![("rejection_rate", Status::Critical)]);
        assert_eq!(t.status, Status::Critical);
        // Too few connects to judge.
        let t = case(3, 6);
        assert!(rules(&t).is_empty());
        // Refusals older than 5 minutes do not count.
        let mut u = user("a", "free", 1);
        record(&mut u, NOW - 20 * MIN, Outcome::ShardRefused, 50);
        record(&mut u, NOW, Outcome::Success, 50);
        assert!(rules(tier(&report(vec![u]), "free")).is_empty());
    }

    #[test]
    fn message_latency_rules_and_tier_target() {
        let case = |tier_name: &str, ms: f64, n: usize| {
            let mut u = user("a", tier_name, 1);
            latency(&mut u, NOW, Series::MessageLatency, ms, n);
            tier(&report(vec![u]), tier_name).clone()
        };
        // Enterprise target 100 ms: 150 ms misses the objective only.
        let t = case("enterprise", 150.0, 50);
        assert_eq!(rules(&t), vec![("latency_slo", Status::Warning)]);
        assert_eq!(t.latency.met, Some(false));
        // 700 ms: the guide's warning and free's objective (500 ms).
        let t = case("free", 700.0, 50);
        assert_eq!(
            rules(&t),
            vec![
                ("message_latency_p95", Status::Warning),
                ("latency_slo", Status::Warning)
            ]
        );
        let t = case("free", 3000.0, 50);
        assert_eq!(rules(&t)[0], ("message_latency_p95", Status::Critical));
        assert_eq!(t.status, Status::Critical);
        // Below the sample minimum: no verdict.
        let t = case("free", 3000.0, (MIN_LATENCY_SAMPLES - 1) as usize);
        assert!(rules(&t).is_empty());
        assert_eq!(t.latency.met, None);
        assert!(t.latency.p95_ms.is_some());
    }

    #[test]
    fn do_response_and_connections_per_do() {
        let mut u = user("a", "pro", 450);
        latency(&mut u, NOW, Series::DoResponse, 1500.0, 20);
        let t = tier(&report(vec![u]), "pro").clone();
        assert_eq!(
            rules(&t),
            vec![
                ("do_response_p95", Status::Warning),
                ("do_connections", Status::Warning)
            ]
        );
        assert_eq!(t.max_connections_per_do, 450);
        assert!(t.latency.do_response_p95_ms.unwrap() > 1000.0);
        let t = tier(&report(vec![user("a", "pro", 400)]), "pro").clone();
        assert!(rules(&t).is_empty(), "400 is not over 400");
    }

    #[test]
    fn burn_rate_needs_both_windows() {
        // Enterprise: budget 0.05 %. 10 % errors in the last 5 min over a quiet hour.
        let mut spike = user("a", "enterprise", 1);
        record(&mut spike, NOW, Outcome::Success, 90);
        record(&mut spike, NOW, Outcome::Unavailable, 10);
        let t = tier(&report(vec![spike.clone()]), "enterprise").clone();
        let s = t.burn_rate.short.unwrap();
        assert!((s - 200.0).abs() < 1e-6, "{s}");
        assert_eq!(rules(&t)[0], ("availability_burn", Status::Critical));
        assert!(rules(&t).contains(&("availability_slo", Status::Warning)));
        // The same spike diluted by an hour of good traffic: the long window is under 14.4x
        // but over 6x -> warning only.
        let mut diluted = spike.clone();
        record(&mut diluted, NOW - 40 * MIN, Outcome::Success, 2_000);
        let t = tier(&report(vec![diluted]), "enterprise").clone();
        let l = t.burn_rate.long.unwrap();
        assert!(l > BURN_WARNING && l < BURN_CRITICAL, "{l}");
        assert_eq!(rules(&t)[0], ("availability_burn", Status::Warning));
        // Diluted further: long under 6x -> no burn reason, though the short window burns.
        let mut quiet = spike;
        record(&mut quiet, NOW - 40 * MIN, Outcome::Success, 14_000);
        let t = tier(&report(vec![quiet]), "enterprise").clone();
        assert!(t.burn_rate.short.unwrap() > BURN_CRITICAL);
        assert!(
            !rules(&t).iter().any(|r| r.0 == "availability_burn"),
            "{:?}",
            t.reasons
        );
        // An old incident alone (short window clean): no burn reason either.
        let mut old = user("b", "enterprise", 1);
        record(&mut old, NOW - 30 * MIN, Outcome::Failure, 50);
        record(&mut old, NOW, Outcome::Success, 50);
        let t = tier(&report(vec![old]), "enterprise").clone();
        assert_eq!(t.burn_rate.short, Some(0.0));
        assert_eq!(rules(&t), vec![("availability_slo", Status::Warning)]);
        assert!(t.error_budget.remaining.unwrap() < 0.0);
    }

    #[test]
    fn tier_limit_refusals_never_hurt_availability() {
        let mut u = user("a", "free", 20);
        record(&mut u, NOW, Outcome::Success, 20);
        record(&mut u, NOW, Outcome::TierLimit, 10_000);
        let t = tier(&report(vec![u]), "free").clone();
        assert_eq!(t.availability.percent, Some(100.0));
        assert_eq!(t.burn_rate.short, Some(0.0));
        assert_eq!(t.status, Status::Ok);
    }

    #[test]
    fn report_status_is_the_worst_tier_and_json_is_camel_case() {
        let mut a = user("a", "free", 1);
        record(&mut a, NOW, Outcome::ShardRefused, 30);
        record(&mut a, NOW, Outcome::Success, 70);
        let b = user("b", "pro", 401);
        let r = report(vec![a, b]);
        assert_eq!(tier(&r, "free").status, Status::Critical);
        assert_eq!(tier(&r, "pro").status, Status::Warning);
        assert_eq!(r.status, Status::Critical);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "critical");
        assert_eq!(v["shortWindowMs"], 300_000);
        assert_eq!(v["longWindowMs"], 3_600_000);
        let t = &v["tiers"][0];
        for k in [
            "tier",
            "rank",
            "limit",
            "status",
            "reasons",
            "latency",
            "availability",
            "errorBudget",
            "burnRate",
            "rejectionRate",
            "connections",
            "maxConnectionsPerDo",
            "users",
        ] {
            assert!(t.get(k).is_some(), "{k}");
        }
        assert!(t["latency"].get("targetP95Ms").is_some());
        assert!(t["availability"].get("targetPercent").is_some());
        assert!(t["errorBudget"].get("remaining").is_some());
        assert_eq!(t["reasons"][0]["rule"], "rejection_rate");
        assert_eq!(t["reasons"][0]["severity"], "critical");
        let back: SloReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn admin_stats_totals_tiers_and_top_users() {
        let mut g = GlobalMetrics::default();
        let mut a = user("alice", "pro", 30);
        a.set_gauges(ShardGauges {
            shard: "cm:alice:h1".into(),
            tier: "pro".into(),
            policy: "single".into(),
            connections: 10,
            ..Default::default()
        });
        record(&mut a, NOW, Outcome::Success, 40);
        record(&mut a, NOW, Outcome::TierLimit, 3);
        let mut b = user("bob", "free", 5);
        record(&mut b, NOW, Outcome::Unavailable, 2);
        let c = user("carol", "free", 5);
        let mut legacy = user("dave", "gold", 1);
        record(&mut legacy, NOW, Outcome::Failure, 1);
        for u in [&a, &b, &c, &legacy] {
            g.add_user(u);
        }
        let s = admin_stats(&g, &tiers(), NOW, 2);
        assert_eq!(s.generated_at, NOW);
        assert_eq!(s.totals.users, 4);
        assert_eq!(s.totals.shards, 5);
        assert_eq!(s.totals.connections, 51);
        assert_eq!(s.totals.max_connections_per_do, 30);
        assert_eq!(s.totals.successes, 40);
        assert_eq!(s.totals.failures, 1);
        assert_eq!(s.totals.rejected_tier_limit, 3);
        assert_eq!(s.totals.rejected_unavailable, 2);
        assert_eq!(s.totals.shard_refusals, 8);
        assert_eq!(s.totals.oldest_connection_ms, Some(300));
        assert_eq!(s.totals.memory_bytes, 41 * 4096);
        let names: Vec<&str> = s.tiers.iter().map(|t| t.tier.as_str()).collect();
        assert_eq!(names, vec!["free", "pro", "enterprise", "gold"]);
        assert_eq!(s.tiers[0].users, 2);
        assert_eq!(s.tiers[0].connections, 10);
        assert_eq!(s.tiers[0].rejected_unavailable, 2);
        assert_eq!(s.tiers[2].connections, 0);
        assert_eq!(s.tiers[3].failures, 1);
        // Top 2 by connections; bob and carol tie at 5: by id.
        let top: Vec<(&str, u64)> = s
            .top_users
            .iter()
            .map(|u| (u.user_id.as_str(), u.connections))
            .collect();
        assert_eq!(top, vec![("alice", 40), ("bob", 5)]);
        let alice = &s.top_users[0];
        assert_eq!(alice.shards, 2);
        assert_eq!(alice.max_shard_connections, 30);
        assert_eq!(alice.imbalance, 1.5);
        assert_eq!(alice.rejected, 2);
        let v = serde_json::to_value(&s).unwrap();
        assert!(v["topUsers"][0].get("userId").is_some());
        assert!(v["totals"].get("rejectedTierLimit").is_some());
    }
}
