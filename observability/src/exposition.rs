//! Prometheus text exposition (format 0.0.4) of a [`GlobalMetrics`] snapshot for `GET /metrics`.
//!
//! The metric names are the capacity guide's (`do_connections_total`, `ws_message_latency`, ...),
//! kept verbatim although some break Prometheus naming conventions (`_total` on a gauge, counters
//! without `_total`, `_ms`): dashboards and alerts written against the guide must work as they
//! are. Latencies are in milliseconds, like the guide's thresholds. Series are bounded: the top
//! `max_users` users by open connections keep their own `user_id`, the rest are folded into
//! `user_id="_other"`; within a user, shards past `max_shards_per_user` fold into
//! `shard="_other"`. Output order is deterministic (families fixed, series sorted by labels,
//! `_other` last), so two renders of the same snapshot are byte-identical.
//!
//! This module decides which series exist and what they hold; the text is written by the
//! `prometheus` crate's `TextEncoder` (format 0.0.4) from its data model. `prometheus-client`
//! does not fit: it writes OpenMetrics and appends `_total` to every counter, which would
//! rename the guide's three counters (`ws_connection_errors` and the others) under the alert
//! rules that query them.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::TextEncoder;

use crate::metrics::{
    GlobalMetrics, HookLoss, LatencyHistogram, Series, ShardGauges, TierMetrics, UpstreamEvent,
    UpstreamResult, UserMetrics,
};
use crate::tier::Tier;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The label value that folded users and shards share.
pub const OTHER: &str = "_other";

/// Caps on the series count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpositionOptions {
    /// Users with their own `user_id` series (ranked by open connections, then id).
    pub max_users: usize,
    /// Shards per kept user with their own `shard` series (ranked the same way).
    pub max_shards_per_user: usize,
}

impl Default for ExpositionOptions {
    /// 50 users x (16 shards x 5 gauges + 4 histograms x 43 lines + 4 counters) stays around
    /// 13k lines in the worst case, which one scrape handles comfortably.
    fn default() -> Self {
        ExpositionOptions {
            max_users: 50,
            max_shards_per_user: 16,
        }
    }
}

/// The histogram metric of each series.
pub fn histogram_name(series: Series) -> &'static str {
    match series {
        Series::ConnectAdmission => "ws_connection_time",
        Series::MessageLatency => "ws_message_latency",
        Series::BroadcastDelivery => "ws_broadcast_delivery_time",
        Series::DoResponse => "do_response_time",
    }
}

fn histogram_help(series: Series) -> &'static str {
    match series {
        Series::ConnectAdmission => {
            "Connect admission time in milliseconds: from the shard receiving the upgrade to the socket accepted."
        }
        Series::MessageLatency => {
            "Message handling latency in milliseconds: a client frame (ping) from arrival at its shard to the answer sent."
        }
        Series::BroadcastDelivery => {
            "Broadcast delivery time in milliseconds: an HTTP broadcast or client broadcast frame until every shard reached answered."
        }
        Series::DoResponse => {
            "Durable Object response time in milliseconds: a shard's answer to a stats call, as seen by the caller."
        }
    }
}

/// A label value that sorts `_other` after every real value.
type SortLabel = (bool, String);

fn sort_label(v: &str) -> SortLabel {
    (v == OTHER, v.to_owned())
}

/// Gauges of one shard series (one shard, or several folded into `_other`).
#[derive(Default)]
struct ShardRow {
    connections: u64,
    rejected: u64,
    events: u64,
    peak_events_per_second: u64,
    oldest_ms: Option<u64>,
    memory_bytes: u64,
    recent_accepted: u64,
    recent_rejected: u64,
}

/// `(user_id, shard, tier, policy)`: one shard series.
type ShardSeries = (SortLabel, SortLabel, String, String);
/// `(user_id, tier)`.
type UserKey = (SortLabel, String);

/// Renders the exposition. `tiers` adds the per-tier SLO targets (`ws_slo_*`) that the
/// burn-rate alert rules join against.
pub fn render(
    global: &GlobalMetrics,
    tiers: &BTreeMap<String, Tier>,
    opts: &ExpositionOptions,
) -> String {
    let kept = kept_users(global, opts.max_users);
    let (shards, users) = fold(global, &kept, opts);
    let mut out = Out::default();
    shard_families(&mut out, &shards);
    user_families(&mut out, &users);
    upstream_families(&mut out, &users);
    slo_families(&mut out, tiers);
    out.family(
        "ws_exposition_folded_users",
        MetricType::GAUGE,
        "Users folded into the user_id _other by the per-user series cap.",
    );
    out.sample(&[], global.users.len().saturating_sub(kept.len()) as f64);
    out.text()
}

/// The run-time shard policy as `/metrics` shows it (`placement::switch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyGauges {
    /// The policy new sockets follow.
    pub active: String,
    /// Where it comes from: `config`, `runtime` or `user`.
    pub source: &'static str,
    /// `SHARD_POLICY` as deployed.
    pub default: String,
    /// Changes made to the run-time policy (0: never).
    pub version: u64,
    /// Users with a policy of their own (canaries).
    pub user_overrides: u64,
    /// Shards draining now (rotation or a switch; as of their last report).
    pub draining_shards: u64,
}

/// The policy families, appended to [`render`]'s text.
pub fn render_policy(p: &PolicyGauges) -> String {
    let mut out = Out::default();
    out.family(
        "edge_policy_info",
        MetricType::GAUGE,
        "The shard policy new sockets follow, where it comes from, and SHARD_POLICY as deployed.",
    );
    out.sample(
        &[
            ("policy", p.active.clone()),
            ("source", p.source.to_owned()),
            ("default", p.default.clone()),
        ],
        1.0,
    );
    for (name, help, v) in [
        (
            "edge_policy_version",
            "Changes made to the run-time policy (0: never).",
            p.version,
        ),
        (
            "edge_policy_user_overrides",
            "Users with a shard policy of their own (canaries).",
            p.user_overrides,
        ),
        (
            "edge_draining_shards",
            "Shards draining now (rotation or a policy switch).",
            p.draining_shards,
        ),
    ] {
        out.family(name, MetricType::GAUGE, help);
        out.sample(&[], v as f64);
    }
    out.text()
}

/// The series to render: each shard's gauges (a user's shards beyond the cap, and users
/// beyond theirs, folded into `_other`), and each user's additive metrics per tier.
fn fold(
    global: &GlobalMetrics,
    kept: &BTreeSet<&str>,
    opts: &ExpositionOptions,
) -> (
    BTreeMap<ShardSeries, ShardRow>,
    BTreeMap<UserKey, TierMetrics>,
) {
    let mut shards: BTreeMap<ShardSeries, ShardRow> = BTreeMap::new();
    let mut users: BTreeMap<UserKey, TierMetrics> = BTreeMap::new();
    for u in global.users.values() {
        let own = kept.contains(u.user_id.as_str());
        let user_label = if own { u.user_id.as_str() } else { OTHER };
        let mut ranked: Vec<_> = u.shards.iter().collect();
        ranked.sort_by(|a, b| {
            b.connections
                .cmp(&a.connections)
                .then_with(|| a.shard.cmp(&b.shard))
        });
        for (i, g) in ranked.into_iter().enumerate() {
            let shard_label = if own && i < opts.max_shards_per_user {
                g.shard.as_str()
            } else {
                OTHER
            };
            shards
                .entry((
                    sort_label(user_label),
                    sort_label(shard_label),
                    g.tier.clone(),
                    g.policy.clone(),
                ))
                .or_default()
                .add(g);
        }
        for (tier, m) in u.observed.total.iter() {
            users
                .entry((sort_label(user_label), tier.to_owned()))
                .or_default()
                .merge(m);
        }
    }
    for (tier, m) in global.other.total.iter() {
        users
            .entry((sort_label(OTHER), tier.to_owned()))
            .or_default()
            .merge(m);
    }
    (shards, users)
}

impl ShardRow {
    fn add(&mut self, g: &ShardGauges) {
        self.connections = self.connections.saturating_add(g.connections);
        self.rejected = self.rejected.saturating_add(g.rejected);
        self.oldest_ms = self.oldest_ms.max(g.oldest_connection_ms);
        self.memory_bytes = self.memory_bytes.saturating_add(g.memory_bytes);
        self.events = self.events.saturating_add(g.events);
        self.peak_events_per_second = self.peak_events_per_second.max(g.peak_events_per_second);
        self.recent_accepted = self.recent_accepted.saturating_add(g.recent_accepted);
        self.recent_rejected = self.recent_rejected.saturating_add(g.recent_rejected);
    }
}

/// A per-shard family: name, type, help, and one row's sample (`None`: no sample for it).
type ShardFamily = (
    &'static str,
    MetricType,
    &'static str,
    fn(&ShardRow) -> Option<f64>,
);

/// The per-shard families, in output order.
fn shard_family_list() -> [ShardFamily; 7] {
    [
        (
            "do_connections_total",
            MetricType::GAUGE,
            "Open WebSocket connections on a ConnectionManager Durable Object (shard).",
            |r| Some(r.connections as f64),
        ),
        (
            "do_connections_rejected",
            MetricType::COUNTER,
            "Connects a shard refused for capacity (full, draining, over its SLO, shed); tier-limit 429s are not counted here.",
            |r| Some(r.rejected as f64),
        ),
        (
            "do_connection_rejection_rate",
            MetricType::GAUGE,
            "Share of connects a shard refused for capacity over the last 5 minutes, 0..1 (absent without connects).",
            |r| {
                let seen = r.recent_accepted.saturating_add(r.recent_rejected);
                (seen > 0).then(|| r.recent_rejected as f64 / seen as f64)
            },
        ),
        (
            "do_memory_usage_bytes",
            MetricType::GAUGE,
            "Estimated memory of a shard's sockets in bytes (an estimate: a fixed per-socket cost plus attachment sizes).",
            |r| Some(r.memory_bytes as f64),
        ),
        (
            "do_events",
            MetricType::GAUGE,
            "Events a shard object handled since it started (requests, socket messages, closes, alarms): a user's busiest object's share is max by (user_id) over sum by (user_id).",
            |r| Some(r.events as f64),
        ),
        (
            "do_peak_events_per_second",
            MetricType::GAUGE,
            "The most events a shard object handled in one second since it started.",
            |r| Some(r.peak_events_per_second as f64),
        ),
        (
            "do_oldest_connection_ms",
            MetricType::GAUGE,
            "Age of a shard's oldest open socket in milliseconds (absent without sockets).",
            |r| r.oldest_ms.map(|ms| ms as f64),
        ),
    ]
}

fn shard_families(out: &mut Out, shards: &BTreeMap<ShardSeries, ShardRow>) {
    let labels = |k: &ShardSeries| {
        [
            ("user_id", k.0 .1.clone()),
            ("shard", k.1 .1.clone()),
            ("tier", k.2.clone()),
            ("policy", k.3.clone()),
        ]
    };
    for (name, kind, help, sample) in shard_family_list() {
        out.family(name, kind, help);
        for (k, r) in shards {
            if let Some(v) = sample(r) {
                out.sample(&labels(k), v);
            }
        }
    }
}

fn user_labels(k: &UserKey) -> [(&'static str, String); 2] {
    [("user_id", k.0 .1.clone()), ("tier", k.1.clone())]
}

/// Connects per user and tier, and the latency histograms.
fn user_families(out: &mut Out, users: &BTreeMap<UserKey, TierMetrics>) {
    out.family(
        "ws_connection_success",
        MetricType::COUNTER,
        "Connects admitted (101).",
    );
    for (k, m) in users {
        out.sample(&user_labels(k), m.counts.successes as f64);
    }
    out.family(
        "ws_connection_errors",
        MetricType::COUNTER,
        "Connects not admitted, by reason: error (a shard or the user's home failed), unavailable (503: every candidate full or shed), tier_limit (429: policy, outside availability).",
    );
    for (k, m) in users {
        let [user, tier] = user_labels(k);
        for (reason, n) in [
            ("error", m.counts.failures),
            ("unavailable", m.counts.rejected_unavailable),
            ("tier_limit", m.counts.rejected_tier_limit),
        ] {
            out.sample(
                &[user.clone(), tier.clone(), ("reason", reason.to_owned())],
                n as f64,
            );
        }
    }
    for series in Series::ALL {
        let name = histogram_name(series);
        out.family(name, MetricType::HISTOGRAM, histogram_help(series));
        for (k, m) in users {
            let h = m.latency.get(series);
            if !h.is_empty() {
                out.histogram(&user_labels(k), h);
            }
        }
    }
}

/// Upstream calls and lifecycle hooks per tier and event (not per user: users x events x
/// buckets is too many series, and the upstream's health is a property of the upstream).
fn upstream_families(out: &mut Out, users: &BTreeMap<UserKey, TierMetrics>) {
    let mut upstream: BTreeMap<String, TierMetrics> = BTreeMap::new();
    for ((_, tier), m) in users {
        upstream.entry(tier.clone()).or_default().merge(m);
    }
    out.family(
        "edge_upstream_requests_total",
        MetricType::COUNTER,
        "Business events and lifecycle hooks sent to the upstream, by result: ok, timeout, error, busy (refused at once: too many in flight on the shard).",
    );
    for (tier, m) in &upstream {
        for (event, e) in &m.upstream {
            for r in UpstreamResult::ALL {
                out.sample(
                    &[
                        ("tier", tier.clone()),
                        ("event", event.clone()),
                        ("result", r.as_str().to_owned()),
                    ],
                    e.count(r) as f64,
                );
            }
        }
    }
    out.family(
        "edge_upstream_latency_ms",
        MetricType::HISTOGRAM,
        "Upstream call time in milliseconds, from the request sent to its answer (or the timeout).",
    );
    for (tier, m) in &upstream {
        for (event, e) in &m.upstream {
            if !e.latency.is_empty() {
                out.histogram(
                    &[("tier", tier.clone()), ("event", event.clone())],
                    &e.latency,
                );
            }
        }
    }
    hook_families(out, &upstream);
}

/// Hooks that never reached the upstream: a day of failures, an outbox bound, or a later
/// hook of the same socket or machine (docs/upstream.md, "Lifecycle hooks").
fn hook_families(out: &mut Out, upstream: &BTreeMap<String, TierMetrics>) {
    out.family(
        "edge_hooks_dropped_total",
        MetricType::COUNTER,
        "Lifecycle hooks dropped without reaching the upstream, by reason: full (the object's outbox bound, UPSTREAM_HOOKS_MAX / UPSTREAM_HOOKS_MAX_BYTES) or expired (still failing a day after it was stored).",
    );
    for (tier, m) in upstream {
        for (event, e) in hooks(m) {
            for l in [HookLoss::Full, HookLoss::Expired] {
                out.sample(
                    &[
                        ("tier", tier.clone()),
                        ("event", event.clone()),
                        ("reason", l.as_str().to_owned()),
                    ],
                    e.lost(l) as f64,
                );
            }
        }
    }
    out.family(
        "edge_hooks_coalesced_total",
        MetricType::COUNTER,
        "Lifecycle hooks left unsent because a later hook made them unnecessary: a socket's connected and disconnected before either was sent, a machine's older transition.",
    );
    for (tier, m) in upstream {
        for (event, e) in hooks(m) {
            out.sample(
                &[("tier", tier.clone()), ("event", event.clone())],
                e.lost(HookLoss::Coalesced) as f64,
            );
        }
    }
}

/// The lifecycle hooks among a tier's upstream events.
fn hooks(m: &TierMetrics) -> impl Iterator<Item = (&String, &UpstreamEvent)> {
    m.upstream.iter().filter(|(ev, _)| ev.starts_with("hook:"))
}

/// Each tier's objectives, which the burn-rate alert rules join against.
fn slo_families(out: &mut Out, tiers: &BTreeMap<String, Tier>) {
    out.family(
        "ws_slo_latency_target",
        MetricType::GAUGE,
        "A tier's latency objective: ws_message_latency p95 below this many milliseconds.",
    );
    for (name, t) in tiers {
        out.sample(&[("tier", name.clone())], t.latency_p95_ms as f64);
    }
    out.family(
        "ws_slo_availability_target",
        MetricType::GAUGE,
        "A tier's availability objective as a ratio (0.999 = 99.9 %) of admitted to attempted connects, 429s excluded.",
    );
    for (name, t) in tiers {
        out.sample(
            &[("tier", name.clone())],
            // Percent to ratio, rounded so 99.9 prints as 0.999, not 0.9990000000000001.
            (t.availability * 1e6).round() / 1e8,
        );
    }
}

/// The users that keep their own series: the top `max` by open connections, then by id. A
/// real user named `_other` is always folded (its series would be indistinguishable).
fn kept_users(global: &GlobalMetrics, max: usize) -> BTreeSet<&str> {
    let mut ranked: Vec<(u64, &UserMetrics)> = global
        .users
        .values()
        .filter(|u| u.user_id != OTHER)
        .map(|u| (u.connections(), u))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.user_id.cmp(&b.1.user_id)));
    ranked
        .into_iter()
        .take(max)
        .map(|(_, u)| u.user_id.as_str())
        .collect()
}

/// The families in the encoder's data model, in output order.
#[derive(Default)]
struct Out {
    families: Vec<MetricFamily>,
}

impl Out {
    fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        self.families.push(f);
    }

    /// A sample of the family opened last (a counter's or a gauge's, by its type).
    fn sample(&mut self, labels: &[(&str, String)], value: f64) {
        let Some(f) = self.families.last_mut() else {
            return;
        };
        let mut m = proto::Metric::from_label(label_pairs(labels));
        if f.get_field_type() == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        f.mut_metric().push(m);
    }

    /// A histogram of the family opened last: its cumulative buckets (the encoder adds
    /// `+Inf`), sum and count.
    fn histogram(&mut self, labels: &[(&str, String)], h: &LatencyHistogram) {
        let Some(f) = self.families.last_mut() else {
            return;
        };
        let buckets = h
            .cumulative_buckets()
            .into_iter()
            .map(|(le, n)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(n);
                b
            })
            .collect();
        let mut p = proto::Histogram::default();
        p.set_bucket(buckets);
        p.set_sample_count(h.count());
        p.set_sample_sum(h.sum_ms());
        let mut m = proto::Metric::from_label(label_pairs(labels));
        m.set_histogram(p);
        f.mut_metric().push(m);
    }

    /// The text. A family without samples is left out (the format allows both; the encoder
    /// refuses them), so no family is ever empty and the encoder cannot fail; were it to, the
    /// scrape says so in a comment instead of losing the other families' lines silently.
    fn text(self) -> String {
        let families: Vec<MetricFamily> = self
            .families
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect();
        TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# exposition failed: {e}\n"))
    }
}

fn label_pairs(labels: &[(&str, String)]) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value(v.clone());
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Observations, Outcome, ShardGauges, UserMetrics};
    use openmetrics_parser::{prometheus::parse_prometheus, PrometheusType, PrometheusValue};
    use std::collections::HashMap;

    const NOW: u64 = 1_800_000_000_000;

    fn tiers() -> BTreeMap<String, Tier> {
        serde_json::from_str(crate::tier::DEFAULT_TIERS).unwrap()
    }

    fn user(id: &str, tier: &str, shard_conns: &[u64]) -> UserMetrics {
        let mut u = UserMetrics::new(id, tier, "hash:shards=auto");
        for (i, n) in shard_conns.iter().enumerate() {
            u.set_gauges(ShardGauges {
                shard: format!("cm:{id}:h{i}"),
                tier: tier.into(),
                policy: "hash:shards=auto".into(),
                connections: *n,
                rejected: i as u64,
                oldest_connection_ms: (*n > 0).then_some(1000 * n),
                memory_bytes: 4096 * n,
                recent_accepted: *n,
                recent_rejected: 1,
                events: 3 * n,
                peak_events_per_second: *n,
                draining: false,
            });
        }
        let o = &mut u.observed;
        for _ in 0..shard_conns.iter().sum::<u64>() {
            o.record_outcome(NOW, tier, Outcome::Success);
            o.record_latency(NOW, tier, Series::ConnectAdmission, 12.0);
        }
        o.record_outcome(NOW, tier, Outcome::TierLimit);
        o.record_outcome(NOW, tier, Outcome::Failure);
        o.record_latency(NOW, tier, Series::MessageLatency, 3.3);
        o.record_latency(NOW, tier, Series::MessageLatency, 250.0);
        o.record_upstream(
            NOW,
            tier,
            "hook:connected",
            UpstreamResult::Error,
            Some(5.0),
        );
        o.record_hook_loss(NOW, tier, "hook:connected", HookLoss::Full);
        o.record_hook_loss(NOW, tier, "hook:disconnected", HookLoss::Coalesced);
        u
    }

    fn global(users: &[UserMetrics]) -> GlobalMetrics {
        let mut g = GlobalMetrics::default();
        for u in users {
            g.add_user(u);
        }
        g
    }

    /// The guide's counters, whose names lack `_total`.
    const SEED_COUNTERS: [&str; 3] = [
        "do_connections_rejected",
        "ws_connection_success",
        "ws_connection_errors",
    ];

    /// Parses with a real text-format parser (a pest grammar of the format); fails on any
    /// syntax error. That parser also applies OpenMetrics' rule that a counter's name ends in
    /// `_total`, which the 0.0.4 format does not have, so the guide's three counters are
    /// declared `gauge` for it; their `# TYPE ... counter` lines are checked here on the text.
    fn parse(text: &str) -> openmetrics_parser::MetricsExposition<PrometheusType, PrometheusValue> {
        let mut relabelled = text.to_owned();
        for c in SEED_COUNTERS {
            let line = format!("# TYPE {c} counter\n");
            // Absent when no series has a sample.
            assert!(text.matches(&line).count() <= 1, "{c}");
            relabelled = relabelled.replace(&line, &format!("# TYPE {c} gauge\n"));
        }
        parse_prometheus(&relabelled).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    /// `(family, {label: value}) -> value` for gauges and counters.
    fn scalars(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
        let exp = parse(text);
        let mut out = vec![];
        for (name, fam) in &exp.families {
            for s in fam.iter_samples() {
                let ls = s.get_labelset().unwrap();
                let labels: HashMap<String, String> =
                    ls.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let v = match &s.value {
                    PrometheusValue::Gauge(n) => n.as_f64(),
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    _ => continue,
                };
                out.push((name.clone(), labels, v));
            }
        }
        out
    }

    fn sum_of(rows: &[(String, HashMap<String, String>, f64)], family: &str) -> f64 {
        rows.iter().filter(|r| r.0 == family).map(|r| r.2).sum()
    }

    #[test]
    fn every_seed_metric_with_help_type_and_labels() {
        let mut alice = user("alice", "pro", &[3, 2]);
        for s in [Series::BroadcastDelivery, Series::DoResponse] {
            alice.observed.record_latency(NOW, "pro", s, 40.0);
        }
        let text = render(
            &global(&[alice, user("bob", "free", &[1])]),
            &tiers(),
            &ExpositionOptions::default(),
        );
        let exp = parse(&text);
        for (name, kind) in [
            ("do_connections_total", PrometheusType::Gauge),
            ("do_connections_rejected", PrometheusType::Gauge),
            ("do_connection_rejection_rate", PrometheusType::Gauge),
            ("do_response_time", PrometheusType::Histogram),
            ("do_memory_usage_bytes", PrometheusType::Gauge),
            ("do_oldest_connection_ms", PrometheusType::Gauge),
            ("do_events", PrometheusType::Gauge),
            ("do_peak_events_per_second", PrometheusType::Gauge),
            ("ws_message_latency", PrometheusType::Histogram),
            ("ws_broadcast_delivery_time", PrometheusType::Histogram),
            ("ws_connection_time", PrometheusType::Histogram),
            ("ws_connection_success", PrometheusType::Gauge),
            ("ws_connection_errors", PrometheusType::Gauge),
            ("ws_slo_latency_target", PrometheusType::Gauge),
            ("ws_slo_availability_target", PrometheusType::Gauge),
        ] {
            let fam = exp.families.get(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(fam.family_type, kind, "{name}");
            assert!(!fam.help.is_empty(), "{name}");
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
        let rows = scalars(&text);
        let conns: Vec<_> = rows
            .iter()
            .filter(|r| r.0 == "do_connections_total")
            .collect();
        assert_eq!(conns.len(), 3);
        let a0 = conns
            .iter()
            .find(|r| r.1["shard"] == "cm:alice:h0")
            .unwrap();
        assert_eq!(a0.2, 3.0);
        assert_eq!(a0.1["user_id"], "alice");
        assert_eq!(a0.1["tier"], "pro");
        assert_eq!(a0.1["policy"], "hash:shards=auto");
        // 1 refused, 3 accepted recently.
        let rate = rows
            .iter()
            .find(|r| r.0 == "do_connection_rejection_rate" && r.1["shard"] == "cm:alice:h0")
            .unwrap();
        assert_eq!(rate.2, 0.25);
        let errs: Vec<_> = rows
            .iter()
            .filter(|r| r.0 == "ws_connection_errors" && r.1["user_id"] == "alice")
            .map(|r| (r.1["reason"].clone(), r.2))
            .collect();
        assert_eq!(errs.len(), 3);
        assert!(errs.contains(&("tier_limit".into(), 1.0)));
        assert!(errs.contains(&("error".into(), 1.0)));
        assert!(errs.contains(&("unavailable".into(), 0.0)));
        let target = rows
            .iter()
            .find(|r| r.0 == "ws_slo_availability_target" && r.1["tier"] == "enterprise")
            .unwrap();
        assert_eq!(target.2, 0.9995);
    }

    #[test]
    fn histograms_have_every_bucket_cumulative_and_consistent() {
        let text = render(
            &global(&[user("alice", "pro", &[3])]),
            &tiers(),
            &ExpositionOptions::default(),
        );
        let exp = parse(&text);
        let fam = &exp.families["ws_message_latency"];
        let samples: Vec<_> = fam.iter_samples().collect();
        assert_eq!(samples.len(), 1);
        let PrometheusValue::Histogram(h) = &samples[0].value else {
            panic!("not a histogram");
        };
        // 40 finite buckets and +Inf.
        assert_eq!(h.buckets.len(), 41);
        let bounds: Vec<f64> = h.buckets.iter().map(|b| b.upper_bound).collect();
        let mut expected = LatencyHistogram::upper_bounds_ms();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected);
        let counts: Vec<f64> = h.buckets.iter().map(|b| b.count.as_f64()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        assert_eq!(*counts.last().unwrap(), 2.0);
        assert_eq!(h.count, Some(2));
        assert_eq!(h.sum.unwrap().as_f64(), 253.3);
        // 3.3 ms is under le=3.2? No: in (3.2, 4.8].
        assert!(
            text.contains(r#"ws_message_latency_bucket{user_id="alice",tier="pro",le="3.2"} 0"#)
        );
        assert!(
            text.contains(r#"ws_message_latency_bucket{user_id="alice",tier="pro",le="4.8"} 1"#)
        );
        assert!(
            text.contains(r#"ws_message_latency_bucket{user_id="alice",tier="pro",le="+Inf"} 2"#)
        );
        // No broadcasts recorded: no series, and a family without series is left out.
        assert!(!exp.families.contains_key("ws_broadcast_delivery_time"));
    }

    #[test]
    fn per_user_cap_folds_into_other_and_keeps_totals() {
        let users = [
            user("u1", "pro", &[5]),
            user("u2", "pro", &[9]),
            user("u3", "free", &[1]),
            user("u4", "free", &[2]),
            user("u5", "pro", &[1]),
        ];
        let all = render(&global(&users), &tiers(), &ExpositionOptions::default());
        let capped = render(
            &global(&users),
            &tiers(),
            &ExpositionOptions {
                max_users: 2,
                max_shards_per_user: 16,
            },
        );
        let (a, c) = (scalars(&all), scalars(&capped));
        // The biggest two keep their series.
        let ids: BTreeSet<String> = c
            .iter()
            .filter(|r| r.0 == "do_connections_total")
            .map(|r| r.1["user_id"].clone())
            .collect();
        assert_eq!(
            ids,
            ["u1", "u2", "_other"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        // Folding keeps every sum.
        for fam in [
            "do_connections_total",
            "do_connections_rejected",
            "do_memory_usage_bytes",
            "ws_connection_success",
            "ws_connection_errors",
        ] {
            assert_eq!(sum_of(&a, fam), sum_of(&c, fam), "{fam}");
        }
        // _other is split by tier (and policy): free (u3, u4) and pro (u5).
        let other: Vec<_> = c
            .iter()
            .filter(|r| r.0 == "do_connections_total" && r.1["user_id"] == OTHER)
            .map(|r| (r.1["tier"].clone(), r.1["shard"].clone(), r.2))
            .collect();
        assert_eq!(
            other,
            vec![
                ("free".to_string(), OTHER.to_string(), 3.0),
                ("pro".to_string(), OTHER.to_string(), 1.0)
            ]
        );
        // Oldest folds as the max, not the sum.
        let oldest = c
            .iter()
            .find(|r| {
                r.0 == "do_oldest_connection_ms" && r.1["user_id"] == OTHER && r.1["tier"] == "free"
            })
            .unwrap();
        assert_eq!(oldest.2, 2000.0);
        assert!(capped.contains("ws_exposition_folded_users 3\n"));
        let exp = parse(&capped);
        let hist_series = exp.families["ws_connection_time"].iter_samples().count();
        // u1, u2, and _other per tier (free, pro).
        assert_eq!(hist_series, 4);
    }

    #[test]
    fn per_shard_cap_folds_a_users_small_shards() {
        let text = render(
            &global(&[user("big", "enterprise", &[1, 7, 3, 5])]),
            &tiers(),
            &ExpositionOptions {
                max_users: 10,
                max_shards_per_user: 2,
            },
        );
        let rows = scalars(&text);
        let mut conns: Vec<(String, f64)> = rows
            .iter()
            .filter(|r| r.0 == "do_connections_total")
            .map(|r| (r.1["shard"].clone(), r.2))
            .collect();
        conns.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            conns,
            vec![
                ("_other".to_string(), 4.0),
                ("cm:big:h1".to_string(), 7.0),
                ("cm:big:h3".to_string(), 5.0)
            ]
        );
    }

    #[test]
    fn unattributed_observations_show_as_other() {
        let mut g = global(&[user("alice", "pro", &[1])]);
        let mut o = Observations::default();
        o.record_outcome(NOW, "free", Outcome::Unavailable);
        g.other = o;
        let rows = scalars(&render(&g, &tiers(), &ExpositionOptions::default()));
        let r = rows
            .iter()
            .find(|r| {
                r.0 == "ws_connection_errors"
                    && r.1["user_id"] == OTHER
                    && r.1["reason"] == "unavailable"
            })
            .unwrap();
        assert_eq!(r.2, 1.0);
        assert_eq!(r.1["tier"], "free");
    }

    #[test]
    fn deterministic_and_other_last() {
        let users = [
            user("zed", "pro", &[1]),
            user("amy", "pro", &[2]),
            user("Bob", "free", &[3]),
        ];
        let opts = ExpositionOptions {
            max_users: 2,
            max_shards_per_user: 4,
        };
        let a = render(&global(&users), &tiers(), &opts);
        let mut rev = users.to_vec();
        rev.reverse();
        let b = render(&global(&rev), &tiers(), &opts);
        assert_eq!(a, b);
        let lines: Vec<&str> = a
            .lines()
            .filter(|l| l.starts_with("do_connections_total{"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains(r#"user_id="Bob""#), "{lines:?}");
        assert!(lines[1].contains(r#"user_id="amy""#), "{lines:?}");
        assert!(lines[2].contains(r#"user_id="_other""#), "{lines:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        // A hostile tier name (the config rejects it, but a stored snapshot might carry
        // one) still yields a parseable exposition.
        let mut u = UserMetrics::new("alice", "pro", "single");
        u.set_gauges(ShardGauges {
            shard: "cm:\"x\"\\\n".into(),
            tier: "p}r,o=\"".into(),
            policy: "single".into(),
            connections: 1,
            ..Default::default()
        });
        let text = render(&global(&[u]), &tiers(), &ExpositionOptions::default());
        assert!(
            text.contains(r#"shard="cm:\"x\"\\\n",tier="p}r,o=\"""#),
            "{text}"
        );
        parse(&text);
    }

    #[test]
    fn a_real_user_named_other_is_folded() {
        let text = render(
            &global(&[user("_other", "pro", &[9]), user("alice", "pro", &[1])]),
            &tiers(),
            &ExpositionOptions::default(),
        );
        assert!(text.contains("ws_exposition_folded_users 1\n"));
        let rows = scalars(&text);
        assert_eq!(
            rows.iter()
                .filter(|r| r.0 == "do_connections_total" && r.1["user_id"] == OTHER)
                .count(),
            1
        );
    }

    #[test]
    fn hook_losses_are_counted_per_tier_kind_and_reason() {
        let text = render(
            &global(&[user("alice", "pro", &[1]), user("bob", "pro", &[2])]),
            &tiers(),
            &ExpositionOptions::default(),
        );
        parse(&text);
        let rows = scalars(&text);
        let value = |family: &str, event: &str, reason: Option<&str>| {
            rows.iter()
                .filter(|r| r.0 == family && r.1["tier"] == "pro" && r.1["event"] == event)
                .filter(|r| reason.is_none_or(|x| r.1["reason"] == x))
                .map(|r| r.2)
                .sum::<f64>()
        };
        let dropped = "edge_hooks_dropped_total";
        assert_eq!(value(dropped, "hook:connected", Some("full")), 2.0);
        assert_eq!(value(dropped, "hook:connected", Some("expired")), 0.0);
        assert_eq!(value(dropped, "hook:disconnected", Some("full")), 0.0);
        let coalesced = "edge_hooks_coalesced_total";
        assert_eq!(value(coalesced, "hook:disconnected", None), 2.0);
        assert_eq!(value(coalesced, "hook:connected", None), 0.0);
        // A lost hook is not a call.
        let calls = rows
            .iter()
            .filter(|r| {
                r.0 == "edge_upstream_requests_total" && r.1["event"] == "hook:disconnected"
            })
            .map(|r| r.2)
            .sum::<f64>();
        assert_eq!(calls, 0.0);
    }

    #[test]
    fn empty_snapshot_is_valid() {
        let text = render(
            &GlobalMetrics::default(),
            &tiers(),
            &ExpositionOptions::default(),
        );
        parse(&text);
        assert!(text.contains("ws_exposition_folded_users 0\n"));
    }

    /// Findings of `promtool check metrics` that the guide's names cause; any other finding,
    /// or a parse error, fails the test.
    const SEED_NAME_LINTS: [&str; 6] = [
        r#"do_connections_total non-counter metrics should not have "_total" suffix"#,
        r#"do_connections_rejected counter metrics should have "_total" suffix"#,
        "do_oldest_connection_ms metric names should not contain abbreviated units",
        r#"ws_connection_success counter metrics should have "_total" suffix"#,
        r#"ws_connection_errors counter metrics should have "_total" suffix"#,
        // Ours, in milliseconds like the guide's latencies (rendered since the test users
        // carry upstream calls).
        "edge_upstream_latency_ms metric names should not contain abbreviated units",
    ];

    #[test]
    fn promtool_check_metrics() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let text = render(
            &global(&[
                user("alice", "pro", &[3, 2]),
                user("bob", "free", &[1]),
                user("carol", "enterprise", &[0]),
            ]),
            &tiers(),
            &ExpositionOptions {
                max_users: 2,
                max_shards_per_user: 1,
            },
        );
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "SKIPPED promtool_check_metrics: promtool not runnable ({e}); run scripts/ensure-promtool.sh"
                );
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // 0: clean; 3: lint findings only; anything else (1: parse error) fails.
        let code = out.status.code();
        assert!(matches!(code, Some(0) | Some(3)), "{code:?}: {said}");
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                SEED_NAME_LINTS.contains(&line.trim()),
                "unexpected promtool finding: {line}"
            );
        }
    }
}
