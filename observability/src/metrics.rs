//! Metrics: mergeable latency histograms, per-tier connect counters and time-windowed rings,
//! plus the snapshots that carry them upward (shard -> user -> registry -> global).
//!
//! Everything additive here merges by plain addition, so an object may report its whole
//! history or only what it recorded since its last report (a delta) and the receiver adds it.
//! Gauges (open sockets, memory, oldest socket) are not additive: the newest report replaces
//! the older one. Time always comes in as `now_ms`; nothing here touches `worker::*`.
//!
//! Histograms use the `histogram` crate (iopsystems) with one fixed geometry everywhere
//! ([`BUCKETS`] log-spaced buckets, 0.1 ms .. 104.8 s), so any two merge and export as the same
//! Prometheus `le` bounds. Its own serde form repeats a ~190-byte config per histogram, which
//! would dominate a ring of small histograms, so [`LatencyHistogram`] has a compact sparse wire
//! form of its own (the geometry is implied, and checked on the way in).

use std::collections::{BTreeMap, VecDeque};

use histogram::{Config as Geometry, Histogram};
use serde::{Deserialize, Serialize};

/// Buckets per histogram. Bounds (ms): 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2, 1.6, 2.4, 3.2, ...
/// alternating x1.33 and x1.5 up to 104857.6 (see [`LatencyHistogram::upper_bounds_ms`]).
pub const BUCKETS: usize = 40;
/// Values are recorded in integer units of 0.1 ms.
const UNITS_PER_MS: f64 = 10.0;
/// Two buckets per power of two: at most 50 % wide, about 20 % error before interpolation.
const GROUPING_POWER: u8 = 1;
/// 2^20 units of 0.1 ms = 104.8 s, past the 60 s a latency here can sensibly take.
const MAX_VALUE_POWER: u8 = 20;
/// Largest recordable unit value (`2^20 - 1`).
const MAX_UNIT: u64 = (1u64 << MAX_VALUE_POWER) - 1;
/// Largest finite bucket bound in ms; slower values count only towards `+Inf`.
pub const MAX_FINITE_MS: f64 = (MAX_UNIT + 1) as f64 / UNITS_PER_MS;

// Evaluated by the compiler: an invalid geometry fails the build, never a request.
#[allow(clippy::panic)]
const GEOMETRY: Geometry = match Geometry::new(GROUPING_POWER, MAX_VALUE_POWER) {
    Ok(g) => g,
    Err(_) => panic!("invalid histogram geometry"),
};
const _: () = assert!(GEOMETRY.total_buckets() == BUCKETS);

/// Short ring: 1-minute slots; 6 of them serve windows up to 5 minutes.
pub type ShortRing = Ring<60_000, 6>;
/// Long ring: 5-minute slots; 13 of them serve windows up to 1 hour. Coarser than the short
/// ring so that a full hour of per-tier, per-series histograms stays small (see docs).
pub type LongRing = Ring<300_000, 13>;
/// The SLO's short window (burn rate, rejection rate, latency status).
pub const SHORT_WINDOW_MS: u64 = 5 * 60_000;
/// The SLO's long window (availability, error budget, burn rate).
pub const LONG_WINDOW_MS: u64 = 60 * 60_000;

/// Errors from combining snapshots of different users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics of user {got:?} cannot be merged into user {expected:?}")]
    UserMismatch { expected: String, got: String },
}

// ---------------------------------------------------------------------------------------------
// Histogram

/// A latency histogram in milliseconds with fixed log-spaced buckets.
///
/// Bucket `i` holds values in `(lower_i, upper_i]` ms (the first also holds 0). Counts merge
/// by addition (saturating: a pinned counter is visibly wrong, a wrapped one is not).
/// Quantiles are estimates: linear interpolation inside the bucket, as Prometheus'
/// `histogram_quantile` does, so `/admin/slo` and a dashboard agree on the same data.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    buckets: Histogram,
    /// Values above [`MAX_FINITE_MS`]: only in `+Inf`.
    overflow: u64,
    /// Sum of recorded values in whole microseconds (an integer keeps the wire form short).
    sum_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: Histogram::with_config(&GEOMETRY),
            overflow: 0,
            sum_us: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value in milliseconds. NaN is ignored (not a measurement); a negative
    /// value (clock skew between objects) counts as 0.
    pub fn record(&mut self, ms: f64) {
        if ms.is_nan() {
            return;
        }
        let ms = ms.max(0.0);
        // Bucket bounds are multiples of 0.1 ms; the epsilon keeps 0.3 (3.0000000000000004
        // units in binary) in the 0.3 bucket instead of the next one.
        let units = (ms * UNITS_PER_MS - 1e-6).ceil();
        let index_value = if units <= 1.0 { 0.0 } else { units - 1.0 };
        let recorded =
            index_value <= MAX_UNIT as f64 && self.buckets.increment(index_value as u64).is_ok();
        if !recorded {
            self.overflow = self.overflow.saturating_add(1);
        }
        // `as` saturates: an infinite value pins the sum instead of wrapping it.
        self.sum_us = self.sum_us.saturating_add((ms * 1000.0).round() as u64);
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self
            .buckets
            .as_mut_slice()
            .iter_mut()
            .zip(other.buckets.as_slice())
        {
            *a = a.saturating_add(*b);
        }
        self.overflow = self.overflow.saturating_add(other.overflow);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets
            .as_slice()
            .iter()
            .fold(self.overflow, |n, c| n.saturating_add(*c))
    }

    /// Sum of recorded values in ms (to the microsecond).
    pub fn sum_ms(&self) -> f64 {
        self.sum_us as f64 / 1000.0
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Estimated `q`-quantile in ms (`q` in 0..=1), `None` when empty or `q` is out of range.
    ///
    /// An estimate: the bucket holding the rank is found exactly, the position inside it is
    /// interpolated linearly. A rank among values above the last bound reports that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for b in self.buckets.iter() {
            let c = b.count();
            if c == 0 {
                continue;
            }
            let upto = below.saturating_add(c);
            if upto as f64 >= rank {
                let (lower, upper) = bounds_ms(b.start(), b.end());
                let inside = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * inside);
            }
            below = upto;
        }
        Some(MAX_FINITE_MS)
    }

    /// `(le, cumulative count)` for every finite bucket, ascending; `+Inf` is [`Self::count`].
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let mut acc = 0u64;
        self.buckets
            .iter()
            .map(|b| {
                acc = acc.saturating_add(b.count());
                (bounds_ms(b.start(), b.end()).1, acc)
            })
            .collect()
    }

    /// The finite `le` bounds in ms, the same for every histogram.
    pub fn upper_bounds_ms() -> Vec<f64> {
        LatencyHistogram::default()
            .cumulative_buckets()
            .into_iter()
            .map(|(le, _)| le)
            .collect()
    }
}

/// A bucket of units `start..=end` holds values in `(start / 10, (end + 1) / 10]` ms, because a
/// value is recorded as `ceil(ms * 10) - 1` units.
fn bounds_ms(start: u64, end: u64) -> (f64, f64) {
    (
        start as f64 / UNITS_PER_MS,
        end.saturating_add(1) as f64 / UNITS_PER_MS,
    )
}

/// Wire form: `{"b":[[bucket index, count], ...],"s":sum in µs,"o":overflow}`; empty buckets
/// and a zero overflow are left out. Typically 60..300 bytes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct WireHistogram {
    #[serde(rename = "b", default)]
    buckets: Vec<(u32, u64)>,
    #[serde(rename = "s", default)]
    sum_us: u64,
    #[serde(rename = "o", default, skip_serializing_if = "is_zero")]
    overflow: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&LatencyHistogram> for WireHistogram {
    fn from(h: &LatencyHistogram) -> Self {
        let buckets = h
            .buckets
            .as_slice()
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect();
        WireHistogram {
            buckets,
            sum_us: h.sum_us,
            overflow: h.overflow,
        }
    }
}

/// Why a histogram's wire form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHistogram {
    #[error("histogram bucket {0} out of order")]
    OutOfOrder(u32),
    #[error("histogram bucket {0} is not in 0..{BUCKETS}")]
    NoSuchBucket(u32),
}

impl TryFrom<WireHistogram> for LatencyHistogram {
    type Error = InvalidHistogram;

    fn try_from(w: WireHistogram) -> Result<Self, InvalidHistogram> {
        let mut h = LatencyHistogram {
            overflow: w.overflow,
            sum_us: w.sum_us,
            ..Default::default()
        };
        let mut last: Option<u32> = None;
        for (i, c) in w.buckets {
            if last.is_some_and(|l| i <= l) {
                return Err(InvalidHistogram::OutOfOrder(i));
            }
            last = Some(i);
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| h.buckets.as_mut_slice().get_mut(i))
                .ok_or(InvalidHistogram::NoSuchBucket(i))?;
            *slot = c;
        }
        Ok(h)
    }
}

impl Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireHistogram::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LatencyHistogram::try_from(WireHistogram::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Series and counters

/// The latency series every object records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Series {
    /// Connect admission: from the shard receiving the upgrade to the socket accepted.
    ConnectAdmission,
    /// Message handling: a ping (or other frame) from arrival to its answer.
    MessageLatency,
    /// Broadcast delivery: HTTP broadcasts and client broadcast frames, to all sockets reached.
    BroadcastDelivery,
    /// Durable Object response time: a shard's answer to a stats call, seen by the caller.
    DoResponse,
}

impl Series {
    pub const ALL: [Series; 4] = [
        Series::ConnectAdmission,
        Series::MessageLatency,
        Series::BroadcastDelivery,
        Series::DoResponse,
    ];
}

/// One histogram per [`Series`]. Empty ones are left out of the wire form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesHistograms {
    #[serde(
        rename = "connect",
        default,
        skip_serializing_if = "LatencyHistogram::is_empty"
    )]
    pub connect_admission: LatencyHistogram,
    #[serde(
        rename = "message",
        default,
        skip_serializing_if = "LatencyHistogram::is_empty"
    )]
    pub message_latency: LatencyHistogram,
    #[serde(
        rename = "broadcast",
        default,
        skip_serializing_if = "LatencyHistogram::is_empty"
    )]
    pub broadcast_delivery: LatencyHistogram,
    #[serde(
        rename = "doResponse",
        default,
        skip_serializing_if = "LatencyHistogram::is_empty"
    )]
    pub do_response: LatencyHistogram,
}

impl SeriesHistograms {
    pub fn get(&self, series: Series) -> &LatencyHistogram {
        match series {
            Series::ConnectAdmission => &self.connect_admission,
            Series::MessageLatency => &self.message_latency,
            Series::BroadcastDelivery => &self.broadcast_delivery,
            Series::DoResponse => &self.do_response,
        }
    }

    pub fn get_mut(&mut self, series: Series) -> &mut LatencyHistogram {
        match series {
            Series::ConnectAdmission => &mut self.connect_admission,
            Series::MessageLatency => &mut self.message_latency,
            Series::BroadcastDelivery => &mut self.broadcast_delivery,
            Series::DoResponse => &mut self.do_response,
        }
    }

    pub fn merge(&mut self, other: &SeriesHistograms) {
        for s in Series::ALL {
            self.get_mut(s).merge(other.get(s));
        }
    }

    pub fn is_empty(&self) -> bool {
        Series::ALL.iter().all(|s| self.get(*s).is_empty())
    }
}

/// What happened to a connect, as seen by the object that records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Admitted (101).
    Success,
    /// Failed by error: a shard or the directory errored or timed out (not a deliberate refusal).
    Failure,
    /// Refused by the tier limit (429). Policy, not unavailability: outside availability.
    TierLimit,
    /// Refused for capacity (503): every candidate full or shed, or slots not obtainable.
    Unavailable,
    /// One shard refused for capacity (full, draining, over its SLO, shed). Not final: the
    /// gateway may still place the connect on another candidate. `do_connections_rejected`.
    ShardRefused,
}

/// Connect counts. Availability counts [`Outcome::Failure`] and [`Outcome::Unavailable`] as
/// unavailability and leaves [`Outcome::TierLimit`] out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub successes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected_tier_limit: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected_unavailable: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shard_refusals: u64,
}

impl Counters {
    pub fn record(&mut self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Success => &mut self.successes,
            Outcome::Failure => &mut self.failures,
            Outcome::TierLimit => &mut self.rejected_tier_limit,
            Outcome::Unavailable => &mut self.rejected_unavailable,
            Outcome::ShardRefused => &mut self.shard_refusals,
        };
        *c = c.saturating_add(1);
    }

    pub fn merge(&mut self, o: &Counters) {
        self.successes = self.successes.saturating_add(o.successes);
        self.failures = self.failures.saturating_add(o.failures);
        self.rejected_tier_limit = self
            .rejected_tier_limit
            .saturating_add(o.rejected_tier_limit);
        self.rejected_unavailable = self
            .rejected_unavailable
            .saturating_add(o.rejected_unavailable);
        self.shard_refusals = self.shard_refusals.saturating_add(o.shard_refusals);
    }

    /// Connects that were refused or failed for reasons of ours (not the tier limit).
    pub fn bad(&self) -> u64 {
        self.failures.saturating_add(self.rejected_unavailable)
    }

    /// Connects that count for availability: successes + failures + 503 refusals.
    pub fn attempts(&self) -> u64 {
        self.successes.saturating_add(self.bad())
    }

    /// successes / attempts, 0..=1; `None` without attempts.
    pub fn availability(&self) -> Option<f64> {
        ratio(self.successes, self.attempts())
    }

    /// (failures + 503 refusals) / attempts, 0..=1; `None` without attempts.
    pub fn error_ratio(&self) -> Option<f64> {
        ratio(self.bad(), self.attempts())
    }

    /// Shard capacity refusals / (refusals + successes), 0..=1: the seed's
    /// `do_connection_rejection_rate`, bounded. `None` when neither happened.
    pub fn rejection_rate(&self) -> Option<f64> {
        ratio(
            self.shard_refusals,
            self.shard_refusals.saturating_add(self.successes),
        )
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// How a call to the upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamResult {
    Ok,
    Timeout,
    Error,
    /// Refused at once: too many calls in flight on the shard.
    Busy,
}

impl UpstreamResult {
    pub const ALL: [UpstreamResult; 4] = [
        UpstreamResult::Ok,
        UpstreamResult::Timeout,
        UpstreamResult::Error,
        UpstreamResult::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamResult::Ok => "ok",
            UpstreamResult::Timeout => "timeout",
            UpstreamResult::Error => "error",
            UpstreamResult::Busy => "busy",
        }
    }
}

/// Why a lifecycle hook left its object's outbox without reaching the upstream
/// (docs/upstream.md, "Lifecycle hooks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HookLoss {
    /// A later hook of the same socket or machine made it unnecessary.
    Coalesced,
    /// Evicted (or refused) to keep the outbox within its bound.
    Full,
    /// Still failing a day after it was stored.
    Expired,
}

impl HookLoss {
    /// The `reason` label of `edge_hooks_dropped_total` (coalesced hooks have their own family).
    pub fn as_str(self) -> &'static str {
        match self {
            HookLoss::Coalesced => "coalesced",
            HookLoss::Full => "full",
            HookLoss::Expired => "expired",
        }
    }
}

/// One upstream event's calls (lifecycle hooks count under their kind): the latency of every
/// call that went out, and how each ended; for hooks, also those that never went out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamEvent {
    #[serde(default, skip_serializing_if = "LatencyHistogram::is_empty")]
    pub latency: LatencyHistogram,
    /// Calls per result, in [`UpstreamResult::ALL`] order.
    #[serde(default)]
    pub results: [u64; 4],
    /// Hooks left unsent, per [`HookLoss`] (not calls: never in `results`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub coalesced: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_full: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_expired: u64,
}

impl UpstreamEvent {
    pub fn count(&self, r: UpstreamResult) -> u64 {
        let i = UpstreamResult::ALL
            .iter()
            .position(|x| *x == r)
            .unwrap_or(0);
        self.results.get(i).copied().unwrap_or(0)
    }

    fn record(&mut self, r: UpstreamResult, ms: Option<f64>) {
        let i = UpstreamResult::ALL
            .iter()
            .position(|x| *x == r)
            .unwrap_or(0);
        if let Some(c) = self.results.get_mut(i) {
            *c = c.saturating_add(1);
        }
        if let Some(ms) = ms {
            self.latency.record(ms);
        }
    }

    fn merge(&mut self, o: &UpstreamEvent) {
        self.latency.merge(&o.latency);
        for (a, b) in self.results.iter_mut().zip(o.results) {
            *a = a.saturating_add(b);
        }
        self.coalesced = self.coalesced.saturating_add(o.coalesced);
        self.dropped_full = self.dropped_full.saturating_add(o.dropped_full);
        self.dropped_expired = self.dropped_expired.saturating_add(o.dropped_expired);
    }

    fn loss_mut(&mut self, l: HookLoss) -> &mut u64 {
        match l {
            HookLoss::Coalesced => &mut self.coalesced,
            HookLoss::Full => &mut self.dropped_full,
            HookLoss::Expired => &mut self.dropped_expired,
        }
    }

    /// Hooks of this kind lost for reason `l`.
    pub fn lost(&self, l: HookLoss) -> u64 {
        match l {
            HookLoss::Coalesced => self.coalesced,
            HookLoss::Full => self.dropped_full,
            HookLoss::Expired => self.dropped_expired,
        }
    }

    pub fn calls(&self) -> u64 {
        self.results.iter().sum()
    }

    pub fn failures(&self) -> u64 {
        self.calls().saturating_sub(self.count(UpstreamResult::Ok))
    }
}

/// Counters and histograms of one tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TierMetrics {
    #[serde(default)]
    pub counts: Counters,
    #[serde(default, skip_serializing_if = "SeriesHistograms::is_empty")]
    pub latency: SeriesHistograms,
    /// Upstream calls per event (or hook kind, or `UPSTREAM_EVENTS` pattern).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, UpstreamEvent>,
}

impl TierMetrics {
    pub fn merge(&mut self, o: &TierMetrics) {
        self.counts.merge(&o.counts);
        self.latency.merge(&o.latency);
        for (event, m) in &o.upstream {
            self.upstream.entry(event.clone()).or_default().merge(m);
        }
    }

    pub fn record_upstream(&mut self, event: &str, r: UpstreamResult, ms: Option<f64>) {
        self.upstream
            .entry(event.to_owned())
            .or_default()
            .record(r, ms);
    }

    pub fn record_hook_loss(&mut self, event: &str, l: HookLoss) {
        let c = self
            .upstream
            .entry(event.to_owned())
            .or_default()
            .loss_mut(l);
        *c = c.saturating_add(1);
    }
}

/// [`TierMetrics`] per tier name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByTier(pub BTreeMap<String, TierMetrics>);

impl ByTier {
    pub fn tier_mut(&mut self, tier: &str) -> &mut TierMetrics {
        self.0.entry(tier.to_owned()).or_default()
    }

    pub fn get(&self, tier: &str) -> Option<&TierMetrics> {
        self.0.get(tier)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &TierMetrics)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn merge(&mut self, o: &ByTier) {
        for (tier, m) in &o.0 {
            self.tier_mut(tier).merge(m);
        }
    }

    /// Every tier merged into one.
    pub fn all_tiers(&self) -> TierMetrics {
        let mut all = TierMetrics::default();
        for m in self.0.values() {
            all.merge(m);
        }
        all
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Time-windowed rings

/// One slot of a ring: what was recorded in `[start_ms, start_ms + SLOT_MS)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    #[serde(rename = "t")]
    pub start_ms: u64,
    #[serde(rename = "d")]
    pub data: ByTier,
}

/// A ring of `SLOTS` slots of `SLOT_MS` each, aligned to multiples of `SLOT_MS` since the
/// epoch so rings of different objects line up and merge slot by slot.
///
/// Only the newest `SLOTS` slot starts are kept; a record older than that is dropped. The
/// geometry is in the type, so two rings that can be merged always have the same one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Slot>", into = "Vec<Slot>")]
pub struct Ring<const SLOT_MS: u64, const SLOTS: usize> {
    /// Ascending by start, no duplicates, all aligned.
    slots: VecDeque<Slot>,
}

impl<const SLOT_MS: u64, const SLOTS: usize> Ring<SLOT_MS, SLOTS> {
    pub const SLOT_MS: u64 = SLOT_MS;
    pub const SLOTS: usize = SLOTS;

    /// The longest window this ring answers in full: `(SLOTS - 1) * SLOT_MS` (the last slot
    /// is the partial current one).
    pub const fn max_window_ms() -> u64 {
        SLOT_MS.saturating_mul(SLOTS.saturating_sub(1) as u64)
    }

    fn span_ms() -> u64 {
        SLOT_MS.saturating_mul(SLOTS as u64)
    }

    fn align(t: u64) -> u64 {
        t - t % SLOT_MS.max(1)
    }

    pub fn record_outcome(&mut self, now_ms: u64, tier: &str, outcome: Outcome) {
        self.prune(now_ms);
        if let Some(d) = self.slot_mut(Self::align(now_ms)) {
            d.tier_mut(tier).counts.record(outcome);
        }
    }

    pub fn record_latency(&mut self, now_ms: u64, tier: &str, series: Series, ms: f64) {
        self.prune(now_ms);
        if let Some(d) = self.slot_mut(Self::align(now_ms)) {
            d.tier_mut(tier).latency.get_mut(series).record(ms);
        }
    }

    pub fn record_upstream(
        &mut self,
        now_ms: u64,
        tier: &str,
        event: &str,
        r: UpstreamResult,
        ms: Option<f64>,
    ) {
        self.prune(now_ms);
        if let Some(d) = self.slot_mut(Self::align(now_ms)) {
            d.tier_mut(tier).record_upstream(event, r, ms);
        }
    }

    pub fn record_hook_loss(&mut self, now_ms: u64, tier: &str, event: &str, l: HookLoss) {
        self.prune(now_ms);
        if let Some(d) = self.slot_mut(Self::align(now_ms)) {
            d.tier_mut(tier).record_hook_loss(event, l);
        }
    }

    /// The slot starting at `start` (aligned), created if missing; `None` when it is older
    /// than the ring keeps.
    fn slot_mut(&mut self, start: u64) -> Option<&mut ByTier> {
        let newest = self.slots.back().map_or(start, |s| s.start_ms.max(start));
        if start.saturating_add(Self::span_ms()) <= newest {
            return None;
        }
        let pos = match self.slots.binary_search_by_key(&start, |s| s.start_ms) {
            Ok(p) => p,
            Err(p) => {
                self.slots.insert(
                    p,
                    Slot {
                        start_ms: start,
                        data: ByTier::default(),
                    },
                );
                self.trim();
                // Trimming removes only slots older than `start`, which stays in the ring.
                self.slots.iter().position(|s| s.start_ms == start)?
            }
        };
        self.slots.get_mut(pos).map(|s| &mut s.data)
    }

    /// Keeps the newest `SLOTS` slot starts.
    fn trim(&mut self) {
        let Some(newest) = self.slots.back().map(|s| s.start_ms) else {
            return;
        };
        while self
            .slots
            .front()
            .is_some_and(|s| s.start_ms.saturating_add(Self::span_ms()) <= newest)
        {
            self.slots.pop_front();
        }
    }

    /// Drops slots that no window ending at `now_ms` can reach, so an idle object's ring
    /// shrinks to nothing instead of being persisted forever.
    pub fn prune(&mut self, now_ms: u64) {
        let current = Self::align(now_ms);
        while self
            .slots
            .front()
            .is_some_and(|s| s.start_ms.saturating_add(Self::span_ms()) <= current)
        {
            self.slots.pop_front();
        }
    }

    /// Everything recorded in the slots overlapping `(now_ms - duration_ms, now_ms]`: the
    /// window covers between `duration_ms` and `duration_ms + SLOT_MS`, never less than asked
    /// while the ring holds it (up to [`Self::max_window_ms`]).
    pub fn window(&self, now_ms: u64, duration_ms: u64) -> ByTier {
        let mut out = ByTier::default();
        for d in self.slots_in(now_ms, duration_ms) {
            out.merge(d);
        }
        out
    }

    /// The slots [`Self::window`] adds up.
    fn slots_in(&self, now_ms: u64, duration_ms: u64) -> impl Iterator<Item = &ByTier> {
        let from = now_ms.saturating_sub(duration_ms);
        self.slots
            .iter()
            .filter(move |s| s.start_ms <= now_ms && s.start_ms.saturating_add(SLOT_MS) > from)
            .map(|s| &s.data)
    }

    /// Adds `other` slot by slot (by start time), keeping the newest `SLOTS` starts.
    pub fn merge(&mut self, other: &Self) {
        for s in &other.slots {
            if let Some(d) = self.slot_mut(s.start_ms) {
                d.merge(&s.data);
            }
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl<const SLOT_MS: u64, const SLOTS: usize> From<Ring<SLOT_MS, SLOTS>> for Vec<Slot> {
    fn from(r: Ring<SLOT_MS, SLOTS>) -> Self {
        r.slots.into()
    }
}

/// Why a ring's wire form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRing {
    #[error("ring of {len} slots, at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("slot start {start_ms} is not a multiple of {slot_ms} ms")]
    Misaligned { start_ms: u64, slot_ms: u64 },
    #[error("slot start {0} out of order")]
    OutOfOrder(u64),
}

impl<const SLOT_MS: u64, const SLOTS: usize> TryFrom<Vec<Slot>> for Ring<SLOT_MS, SLOTS> {
    type Error = InvalidRing;

    fn try_from(v: Vec<Slot>) -> Result<Self, InvalidRing> {
        if v.len() > SLOTS {
            return Err(InvalidRing::TooLong {
                len: v.len(),
                max: SLOTS,
            });
        }
        let mut prev: Option<u64> = None;
        for s in &v {
            if s.start_ms % SLOT_MS.max(1) != 0 {
                return Err(InvalidRing::Misaligned {
                    start_ms: s.start_ms,
                    slot_ms: SLOT_MS,
                });
            }
            if prev.is_some_and(|p| s.start_ms <= p) {
                return Err(InvalidRing::OutOfOrder(s.start_ms));
            }
            prev = Some(s.start_ms);
        }
        let mut ring = Ring { slots: v.into() };
        ring.trim();
        Ok(ring)
    }
}

// ---------------------------------------------------------------------------------------------
// Observations: what one object recorded

/// Everything additive an object recorded: lifetime totals per tier (for Prometheus counters
/// and histograms) and the two windowed rings (for SLOs and admission).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    #[serde(default, skip_serializing_if = "ByTier::is_empty")]
    pub total: ByTier,
    #[serde(default, skip_serializing_if = "Ring::is_empty")]
    pub short: ShortRing,
    #[serde(default, skip_serializing_if = "Ring::is_empty")]
    pub long: LongRing,
}

impl Observations {
    pub fn record_outcome(&mut self, now_ms: u64, tier: &str, outcome: Outcome) {
        self.total.tier_mut(tier).counts.record(outcome);
        self.short.record_outcome(now_ms, tier, outcome);
        self.long.record_outcome(now_ms, tier, outcome);
    }

    pub fn record_latency(&mut self, now_ms: u64, tier: &str, series: Series, ms: f64) {
        self.total.tier_mut(tier).latency.get_mut(series).record(ms);
        self.short.record_latency(now_ms, tier, series, ms);
        self.long.record_latency(now_ms, tier, series, ms);
    }

    /// An upstream call for `event`: its result and, when it went out, its latency.
    pub fn record_upstream(
        &mut self,
        now_ms: u64,
        tier: &str,
        event: &str,
        r: UpstreamResult,
        ms: Option<f64>,
    ) {
        self.total.tier_mut(tier).record_upstream(event, r, ms);
        self.short.record_upstream(now_ms, tier, event, r, ms);
        self.long.record_upstream(now_ms, tier, event, r, ms);
    }

    /// A lifecycle hook of kind `event` (`hook:connected`, ...) that never reached the upstream.
    pub fn record_hook_loss(&mut self, now_ms: u64, tier: &str, event: &str, l: HookLoss) {
        self.total.tier_mut(tier).record_hook_loss(event, l);
        self.short.record_hook_loss(now_ms, tier, event, l);
        self.long.record_hook_loss(now_ms, tier, event, l);
    }

    pub fn merge(&mut self, o: &Observations) {
        self.total.merge(&o.total);
        self.short.merge(&o.short);
        self.long.merge(&o.long);
    }

    /// The window `(now_ms - duration_ms, now_ms]` from the short ring when it reaches that
    /// far (up to 5 min, 1-minute resolution), else from the long ring (up to 1 h, 5-minute
    /// resolution). Longer windows get the whole long ring.
    pub fn window(&self, now_ms: u64, duration_ms: u64) -> ByTier {
        if duration_ms <= ShortRing::max_window_ms() {
            self.short.window(now_ms, duration_ms)
        } else {
            self.long.window(now_ms, duration_ms)
        }
    }

    /// [`Self::window`]'s histogram of one series, every tier merged: what admission reads
    /// on every connect, without copying the slots' other data.
    pub fn latency_window(
        &self,
        now_ms: u64,
        duration_ms: u64,
        series: Series,
    ) -> LatencyHistogram {
        let mut out = LatencyHistogram::default();
        for m in self
            .slots_in(now_ms, duration_ms)
            .flat_map(|d| d.0.values())
        {
            out.merge(m.latency.get(series));
        }
        out
    }

    /// The slots of the ring that answers a window of `duration_ms` (as [`Self::window`]).
    fn slots_in(&self, now_ms: u64, duration_ms: u64) -> Box<dyn Iterator<Item = &ByTier> + '_> {
        if duration_ms <= ShortRing::max_window_ms() {
            Box::new(self.short.slots_in(now_ms, duration_ms))
        } else {
            Box::new(self.long.slots_in(now_ms, duration_ms))
        }
    }

    pub fn prune(&mut self, now_ms: u64) {
        self.short.prune(now_ms);
        self.long.prune(now_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.total.is_empty() && self.short.is_empty() && self.long.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots carried upward

/// A shard's gauges: replaced by each newer report, never added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardGauges {
    pub shard: String,
    pub tier: String,
    pub policy: String,
    /// Open sockets now (`do_connections_total`).
    pub connections: u64,
    /// Capacity refusals over the shard's lifetime, persisted (`do_connections_rejected`).
    /// Tier-limit refusals (429) are not in here.
    pub rejected: u64,
    /// Age in ms of the oldest open socket (`do_oldest_connection_ms`).
    pub oldest_connection_ms: Option<u64>,
    /// Estimated memory in bytes (`do_memory_usage_bytes`; see stats.rs for the estimate).
    pub memory_bytes: u64,
    /// Connects accepted and refused for capacity over the short window, behind
    /// `do_connection_rejection_rate`.
    pub recent_accepted: u64,
    pub recent_rejected: u64,
    /// What the shard object handled since it started (`stats::ObjectLoad`).
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub peak_events_per_second: u64,
    /// The shard drains (rotation or a policy switch): `edge_draining_shards`.
    #[serde(default)]
    pub draining: bool,
}

impl ShardGauges {
    /// Fills the recent counts from the shard's own (full, not delta) observations.
    pub fn with_recent(mut self, full: &Observations, now_ms: u64) -> Self {
        let w = full.window(now_ms, SHORT_WINDOW_MS).all_tiers();
        self.recent_accepted = w.counts.successes;
        self.recent_rejected = w.counts.shard_refusals;
        self
    }

    /// Recent refusals / (refusals + accepts), 0..=1; `None` when neither happened.
    pub fn rejection_rate(&self) -> Option<f64> {
        ratio(
            self.recent_rejected,
            self.recent_rejected.saturating_add(self.recent_accepted),
        )
    }
}

/// What one shard reports upward.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardMetrics {
    pub user_id: String,
    pub gauges: ShardGauges,
    /// The shard's observations: all of them, or only those since its last report; the
    /// receiver adds either way (see docs/observability.md).
    #[serde(default)]
    pub observed: Observations,
}

/// One user's metrics: the latest gauges of each shard and the sum of their observations
/// (plus what the directory and gateway recorded for the user).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserMetrics {
    pub user_id: String,
    /// The user's current tier and policy (the latest connect's).
    pub tier: String,
    pub policy: String,
    /// Sorted by shard name, unique.
    pub shards: Vec<ShardGauges>,
    #[serde(default)]
    pub observed: Observations,
}

impl UserMetrics {
    pub fn new(user_id: &str, tier: &str, policy: &str) -> Self {
        UserMetrics {
            user_id: user_id.to_owned(),
            tier: tier.to_owned(),
            policy: policy.to_owned(),
            ..Default::default()
        }
    }

    /// Replaces the shard's gauges (or adds them) and adds its observations.
    pub fn add_shard(&mut self, s: &ShardMetrics) -> Result<(), MetricsError> {
        self.check_user(&s.user_id)?;
        self.set_gauges(s.gauges.clone());
        self.observed.merge(&s.observed);
        Ok(())
    }

    /// Replaces (or adds) one shard's gauges.
    pub fn set_gauges(&mut self, g: ShardGauges) {
        match self.shards.binary_search_by(|s| s.shard.cmp(&g.shard)) {
            Ok(i) => {
                if let Some(slot) = self.shards.get_mut(i) {
                    *slot = g;
                }
            }
            Err(i) => self.shards.insert(i, g),
        }
    }

    /// Forgets a shard's gauges (it left the user's shard set).
    pub fn remove_shard(&mut self, shard: &str) {
        self.shards.retain(|s| s.shard != shard);
    }

    /// Merges a newer report of the same user: its gauges win, observations add.
    pub fn merge(&mut self, o: &UserMetrics) -> Result<(), MetricsError> {
        self.check_user(&o.user_id)?;
        if !o.tier.is_empty() {
            self.tier.clone_from(&o.tier);
        }
        if !o.policy.is_empty() {
            self.policy.clone_from(&o.policy);
        }
        for g in &o.shards {
            self.set_gauges(g.clone());
        }
        self.observed.merge(&o.observed);
        Ok(())
    }

    fn check_user(&self, got: &str) -> Result<(), MetricsError> {
        if self.user_id == got {
            Ok(())
        } else {
            Err(MetricsError::UserMismatch {
                expected: self.user_id.clone(),
                got: got.to_owned(),
            })
        }
    }

    pub fn connections(&self) -> u64 {
        self.shards.iter().map(|s| s.connections).sum()
    }

    pub fn max_shard_connections(&self) -> u64 {
        self.shards.iter().map(|s| s.connections).max().unwrap_or(0)
    }

    pub fn rejected(&self) -> u64 {
        self.shards.iter().map(|s| s.rejected).sum()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.memory_bytes).sum()
    }

    pub fn oldest_connection_ms(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter_map(|s| s.oldest_connection_ms)
            .max()
    }
}

/// The operator's view: every reported user, plus observations not attributed to a listed
/// user (`other`): a registry may fold small users' deltas there, or move users' rings there
/// to keep only one global ring in memory; exposition shows `other` as `user_id="_other"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalMetrics {
    #[serde(default)]
    pub users: BTreeMap<String, UserMetrics>,
    #[serde(default)]
    pub other: Observations,
}

impl GlobalMetrics {
    /// Adds a user's report, merging with what is already there for that user.
    pub fn add_user(&mut self, u: &UserMetrics) {
        match self.users.get_mut(&u.user_id) {
            // Same key, so the user ids match and the merge cannot fail.
            Some(have) => {
                let _ = have.merge(u);
            }
            None => {
                self.users.insert(u.user_id.clone(), u.clone());
            }
        }
    }

    /// Combines two partial views (e.g. two registry shards).
    pub fn merge(&mut self, o: &GlobalMetrics) {
        for u in o.users.values() {
            self.add_user(u);
        }
        self.other.merge(&o.other);
    }

    /// Per tier, everything recorded in the window, over all users and `other`.
    pub fn window(&self, now_ms: u64, duration_ms: u64) -> ByTier {
        let mut w = self.other.window(now_ms, duration_ms);
        for u in self.users.values() {
            w.merge(&u.observed.window(now_ms, duration_ms));
        }
        w
    }

    /// Per tier, lifetime totals over all users and `other`.
    pub fn totals(&self) -> ByTier {
        let mut t = self.other.total.clone();
        for u in self.users.values() {
            t.merge(&u.observed.total);
        }
        t
    }

    pub fn shards(&self) -> impl Iterator<Item = (&UserMetrics, &ShardGauges)> {
        self.users
            .values()
            .flat_map(|u| u.shards.iter().map(move |s| (u, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[f64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for v in values {
            h.record(*v);
        }
        h
    }

    #[test]
    fn geometry_is_fixed_and_log_spaced() {
        let b = LatencyHistogram::upper_bounds_ms();
        assert_eq!(b.len(), BUCKETS);
        assert_eq!(&b[..8], &[0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2, 1.6]);
        assert_eq!(*b.last().unwrap(), MAX_FINITE_MS);
        assert_eq!(MAX_FINITE_MS, 104857.6);
        // From 0.4 ms on, each bound is 4/3 or 3/2 of the previous one.
        for w in b[3..].windows(2) {
            let r = w[1] / w[0];
            assert!(
                (r - 4.0 / 3.0).abs() < 1e-9 || (r - 1.5).abs() < 1e-9,
                "{w:?}"
            );
        }
        // Covers the brief's range: 0.1 ms .. 60 s.
        assert!(b[0] <= 0.1 && *b.last().unwrap() >= 60_000.0);
    }

    #[test]
    fn values_land_in_the_bucket_whose_le_bounds_them() {
        let bounds = LatencyHistogram::upper_bounds_ms();
        for (i, le) in bounds.iter().enumerate() {
            // Exactly on a bound: in that bucket. Just above: in the next one.
            let h = hist(&[*le]);
            let c = h.cumulative_buckets();
            assert_eq!(c[i].1, 1, "value {le} not under le={le}");
            if i > 0 {
                assert_eq!(c[i - 1].1, 0, "value {le} under le={}", bounds[i - 1]);
            }
            let above = hist(&[le + 0.01]);
            assert_eq!(above.cumulative_buckets()[i].1, 0, "{le}+0.01");
        }
        let z = hist(&[0.0, -5.0]);
        assert_eq!(z.cumulative_buckets()[0].1, 2);
        assert_eq!(z.sum_ms(), 0.0);
    }

    #[test]
    fn count_sum_overflow_and_nan() {
        let mut h = hist(&[1.0, 2.5, 1000.0, 200_000.0, f64::INFINITY]);
        h.record(f64::NAN);
        assert_eq!(h.count(), 5);
        let c = h.cumulative_buckets();
        assert_eq!(c.last().unwrap().1, 3, "overflow only in +Inf");
        assert_eq!(h.overflow, 2);
        assert_eq!(h.sum_us, u64::MAX, "an infinite value pins the sum");
        let h = hist(&[1.0, 2.5, 1000.0]);
        assert_eq!(h.sum_ms(), 1003.5);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        assert_eq!(LatencyHistogram::new().quantile(0.95), None);
        let h = hist(&[100.0; 10]);
        assert_eq!(h.quantile(1.5), None);
        assert_eq!(h.quantile(f64::NAN), None);
        // 100 ms sits in (76.8, 102.4]; rank 9.5 of 10 -> 95 % of the way.
        let p95 = h.quantile(0.95).unwrap();
        assert!((p95 - (76.8 + 25.6 * 0.95)).abs() < 1e-9, "{p95}");
        // 90 values at ~1 ms and 10 at ~1 s: p50 in the 1 ms bucket, p95 in the 1 s one.
        let mut v = vec![1.0; 90];
        v.extend([1000.0; 10]);
        let h = hist(&v);
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 > 0.8 && p50 <= 1.2, "{p50}");
        let p95 = h.quantile(0.95).unwrap();
        assert!(p95 > 819.2 && p95 <= 1228.8, "{p95}");
        // Only overflowed values: the last finite bound, as Prometheus answers.
        assert_eq!(hist(&[1e9]).quantile(0.5), Some(MAX_FINITE_MS));
    }

    #[test]
    fn quantile_error_is_bounded_by_bucket_width() {
        // A spread of values: the estimate is within the true value's bucket.
        let values: Vec<f64> = (1..=1000).map(|i| i as f64 * 0.7).collect();
        let h = hist(&values);
        for q in [0.5, 0.9, 0.95, 0.99] {
            let exact = values[((q * 1000.0) as usize).min(999) - 1];
            let est = h.quantile(q).unwrap();
            assert!(
                (est / exact) < 1.5 && (exact / est) < 1.5,
                "q={q} est={est} exact={exact}"
            );
        }
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = hist(&[1.0, 10.0]);
        let b = hist(&[10.0, 100.0, 1e9]);
        a.merge(&b);
        assert_eq!(a, hist(&[1.0, 10.0, 10.0, 100.0, 1e9]));
        assert_eq!(a.count(), 5);
    }

    #[test]
    fn wire_form_is_compact_and_round_trips() {
        let h = hist(&[0.5, 3.0, 3.0, 250.0, 1e9]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"b":[[4,1],[9,2],[22,1]],"s":1000000256500,"o":1}"#
        );
        let back: LatencyHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(
            serde_json::to_string(&LatencyHistogram::new()).unwrap(),
            r#"{"b":[],"s":0}"#
        );
        for bad in [
            r#"{"b":[[40,1]],"s":0}"#,
            r#"{"b":[[3,1],[2,1]],"s":0}"#,
            r#"{"b":[[3,1],[3,1]],"s":0}"#,
        ] {
            assert!(
                serde_json::from_str::<LatencyHistogram>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn serialized_sizes() {
        // Typical: a few hundred samples over ~8 buckets.
        let mut typical = LatencyHistogram::new();
        for i in 0..500 {
            typical.record(5.0 + (i % 97) as f64 * 1.3);
        }
        let typical_len = serde_json::to_string(&typical).unwrap().len();
        // Worst case: every bucket with a large count.
        let mut full = LatencyHistogram::new();
        for le in LatencyHistogram::upper_bounds_ms() {
            for _ in 0..3 {
                full.record(le);
            }
        }
        full.merge(&full.clone());
        let mut big = full.clone();
        for _ in 0..20 {
            big.merge(&full.clone());
            big.merge(&big.clone());
        }
        let full_len = serde_json::to_string(&big).unwrap().len();
        eprintln!("histogram JSON: typical {typical_len} B, every bucket large {full_len} B");
        assert!(typical_len < 200, "{typical_len}");
        assert!(full_len < 1024, "{full_len}");
    }

    #[test]
    fn one_series_window_is_the_full_windows_series() {
        // Three tiers, every series, over more slots than either ring keeps; the series-only
        // window must equal the full window's, for windows the short and the long ring answer.
        let mut o = Observations::default();
        let t0 = 1_700_000_000_000u64;
        let mut x = 7u64;
        for i in 0..4_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let now = t0 + i * 1_700;
            let tier = ["free", "pro", "load"][(x >> 33) as usize % 3];
            let series = Series::ALL[(x >> 40) as usize % Series::ALL.len()];
            o.record_latency(now, tier, series, (x >> 50) as f64 / 10.0);
            o.record_outcome(now, tier, Outcome::Success);
        }
        let end = t0 + 4_000 * 1_700;
        for now in [end, end + 30_000, end + 200_000] {
            for d in [
                1_000, 60_000, 299_000, 300_000, 900_000, 3_600_000, 10_000_000,
            ] {
                let full = o.window(now, d).all_tiers();
                for s in Series::ALL {
                    assert_eq!(
                        o.latency_window(now, d, s),
                        *full.latency.get(s),
                        "{now} {d} {s:?}"
                    );
                }
            }
        }
        assert!(
            o.latency_window(end, 60_000, Series::MessageLatency)
                .count()
                > 0
        );
    }

    #[test]
    fn counters_ratios() {
        let mut c = Counters::default();
        assert_eq!(c.availability(), None);
        assert_eq!(c.rejection_rate(), None);
        for o in [
            Outcome::Success,
            Outcome::Success,
            Outcome::Success,
            Outcome::Failure,
            Outcome::TierLimit,
            Outcome::TierLimit,
            Outcome::Unavailable,
            Outcome::ShardRefused,
        ] {
            c.record(o);
        }
        assert_eq!(c.attempts(), 5, "429s are outside availability");
        assert_eq!(c.availability(), Some(0.6));
        assert_eq!(c.error_ratio(), Some(0.4));
        assert_eq!(c.rejection_rate(), Some(0.25));
        let mut d = c;
        d.merge(&c);
        assert_eq!(d.successes, 6);
        assert_eq!(d.rejected_tier_limit, 4);
        assert_eq!(d.shard_refusals, 2);
    }

    const MIN: u64 = 60_000;

    #[test]
    fn ring_records_into_aligned_slots_and_windows() {
        let mut r = ShortRing::default();
        let t0 = 1_000 * MIN; // aligned
        r.record_outcome(t0 + 5, "pro", Outcome::Success);
        r.record_outcome(t0 + MIN - 1, "pro", Outcome::Success);
        r.record_outcome(t0 + MIN, "pro", Outcome::Failure);
        r.record_latency(t0 + 3 * MIN + 10, "free", Series::MessageLatency, 42.0);
        assert_eq!(r.slots().count(), 3);
        let now = t0 + 3 * MIN + 30_000;
        // 1 minute back reaches into slot t0+2min (empty) and t0+3min.
        let w = r.window(now, MIN);
        assert!(w.get("pro").is_none());
        assert_eq!(w.get("free").unwrap().latency.message_latency.count(), 1);
        // 3 minutes back: (t0+30s, now] overlaps slots t0 .. t0+3min.
        let w = r.window(now, 3 * MIN);
        assert_eq!(w.get("pro").unwrap().counts.successes, 2);
        assert_eq!(w.get("pro").unwrap().counts.failures, 1);
        // 2.5 minutes back: from t0+1min exactly: slot t0 ends at t0+1min, out.
        let w = r.window(now, 2 * MIN + 30_000);
        assert_eq!(w.get("pro").unwrap().counts.successes, 0);
        assert_eq!(w.get("pro").unwrap().counts.failures, 1);
    }

    #[test]
    fn ring_keeps_the_newest_slots_and_drops_old_records() {
        let mut r = ShortRing::default();
        let t0 = 1_000 * MIN;
        for i in 0..10 {
            r.record_outcome(t0 + i * MIN, "pro", Outcome::Success);
        }
        let starts: Vec<u64> = r.slots().map(|s| s.start_ms).collect();
        assert_eq!(starts, (4..10).map(|i| t0 + i * MIN).collect::<Vec<_>>());
        // A record for a slot older than the ring keeps is dropped.
        r.record_outcome(t0 + 3 * MIN, "pro", Outcome::Failure);
        assert_eq!(
            r.window(t0 + 10 * MIN, 10 * MIN)
                .all_tiers()
                .counts
                .failures,
            0
        );
        // A late record inside the kept range lands in its slot.
        r.record_outcome(t0 + 5 * MIN + 1, "pro", Outcome::Failure);
        assert_eq!(r.window(t0 + 5 * MIN + 2, 0).all_tiers().counts.failures, 1);
        // Idle for an hour: nothing left to persist.
        r.prune(t0 + 70 * MIN);
        assert!(r.is_empty());
    }

    #[test]
    fn rings_merge_slot_by_slot() {
        let t0 = 1_000 * MIN;
        let mut a = ShortRing::default();
        let mut b = ShortRing::default();
        a.record_outcome(t0, "pro", Outcome::Success);
        a.record_outcome(t0 + 2 * MIN, "pro", Outcome::Success);
        b.record_outcome(t0 + 2 * MIN + 7, "pro", Outcome::Success);
        b.record_outcome(t0 + 3 * MIN, "free", Outcome::TierLimit);
        b.record_outcome(t0 + 7 * MIN, "pro", Outcome::Failure);
        a.merge(&b);
        let starts: Vec<u64> = a.slots().map(|s| s.start_ms).collect();
        // t0 is 7 slot starts before the newest (t0+7min): the merge drops it.
        assert_eq!(starts, vec![t0 + 2 * MIN, t0 + 3 * MIN, t0 + 7 * MIN]);
        let s = a.slots().next().unwrap();
        assert_eq!(s.data.get("pro").unwrap().counts.successes, 2);
        let w = a.window(t0 + 7 * MIN, 5 * MIN);
        assert_eq!(w.get("free").unwrap().counts.rejected_tier_limit, 1);
        assert_eq!(w.get("pro").unwrap().counts.failures, 1);
        assert_eq!(w.get("pro").unwrap().counts.successes, 2);
    }

    #[test]
    fn ring_merge_equals_recording_in_one_ring() {
        // Two objects recording a stream, merged, see what one object would have seen.
        let t0 = 5_000 * MIN;
        let mut one = LongRing::default();
        let mut a = LongRing::default();
        let mut b = LongRing::default();
        for i in 0..500u64 {
            let t = t0 + i * 7_919;
            let tier = if i % 3 == 0 { "free" } else { "pro" };
            let ms = (i % 50) as f64 * 3.3;
            one.record_latency(t, tier, Series::BroadcastDelivery, ms);
            one.record_outcome(t, tier, Outcome::Success);
            let r = if i % 2 == 0 { &mut a } else { &mut b };
            r.record_latency(t, tier, Series::BroadcastDelivery, ms);
            r.record_outcome(t, tier, Outcome::Success);
        }
        a.merge(&b);
        assert_eq!(a, one);
    }

    #[test]
    fn ring_wire_form_validates() {
        let mut r = ShortRing::default();
        r.record_outcome(7 * MIN, "pro", Outcome::Success);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"[{"t":420000,"d":{"pro":{"counts":{"successes":1}}}}]"#
        );
        assert_eq!(serde_json::from_str::<ShortRing>(&json).unwrap(), r);
        for bad in [
            r#"[{"t":420001,"d":{}}]"#,
            r#"[{"t":480000,"d":{}},{"t":420000,"d":{}}]"#,
            r#"[{"t":0,"d":{}},{"t":60000,"d":{}},{"t":120000,"d":{}},{"t":180000,"d":{}},{"t":240000,"d":{}},{"t":300000,"d":{}},{"t":360000,"d":{}}]"#,
        ] {
            assert!(serde_json::from_str::<ShortRing>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn observations_pick_the_ring_by_window() {
        let mut o = Observations::default();
        let t0 = 10_000 * MIN;
        o.record_outcome(t0, "pro", Outcome::Failure);
        o.record_outcome(t0 + 30 * MIN, "pro", Outcome::Success);
        let now = t0 + 31 * MIN;
        assert_eq!(
            o.window(now, SHORT_WINDOW_MS).all_tiers().counts.attempts(),
            1
        );
        assert_eq!(
            o.window(now, LONG_WINDOW_MS).all_tiers().counts.attempts(),
            2
        );
        assert_eq!(o.total.get("pro").unwrap().counts.attempts(), 2);
        o.prune(t0 + 3 * LONG_WINDOW_MS);
        assert!(o.short.is_empty() && o.long.is_empty());
        assert!(!o.total.is_empty(), "lifetime totals stay");
    }

    /// A ring full in every dimension: 3 tiers, all series, every bucket, every counter.
    fn worst_case(now: u64) -> Observations {
        let mut o = Observations::default();
        for slot in 0..13u64 {
            let t = now - slot * 5 * MIN;
            for tier in ["free", "pro", "enterprise"] {
                for s in Series::ALL {
                    for le in LatencyHistogram::upper_bounds_ms() {
                        o.record_latency(t, tier, s, le);
                    }
                }
                for oc in [
                    Outcome::Success,
                    Outcome::Failure,
                    Outcome::TierLimit,
                    Outcome::Unavailable,
                    Outcome::ShardRefused,
                ] {
                    o.record_outcome(t, tier, oc);
                }
            }
        }
        // Scale counts up to 6 digits so the numbers are realistically long.
        let copy = o.clone();
        for _ in 0..99_999 {
            o.merge(&copy);
            if o.total.all_tiers().counts.successes > 100_000 {
                break;
            }
        }
        o
    }

    #[test]
    fn serialized_ring_sizes() {
        let now = 100_000 * MIN;
        // A shard's typical hour: one tier, 200 pings, 20 broadcasts, 20 connects per minute.
        let mut typical = Observations::default();
        for m in 0..60 {
            let t = now - m * MIN;
            for i in 0..200 {
                typical.record_latency(
                    t + i,
                    "pro",
                    Series::MessageLatency,
                    0.2 + (i % 13) as f64 * 0.9,
                );
            }
            for i in 0..20 {
                typical.record_latency(t + i, "pro", Series::BroadcastDelivery, 3.0 + i as f64);
                typical.record_latency(t + i, "pro", Series::ConnectAdmission, 8.0 + i as f64);
                typical.record_outcome(t + i, "pro", Outcome::Success);
            }
        }
        let typical_len = serde_json::to_string(&typical).unwrap().len();
        let worst = worst_case(now);
        let worst_len = serde_json::to_string(&worst).unwrap().len();
        let back: Observations =
            serde_json::from_str(&serde_json::to_string(&worst).unwrap()).unwrap();
        assert_eq!(back, worst);
        eprintln!(
            "observations JSON (lifetime + 6x1min + 13x5min): typical shard {typical_len} B, worst case {worst_len} B"
        );
        assert!(typical_len < 16 * 1024, "{typical_len}");
        assert!(worst_len < 160 * 1024, "{worst_len}");
    }

    fn gauges(shard: &str, n: u64) -> ShardGauges {
        ShardGauges {
            shard: shard.into(),
            tier: "pro".into(),
            policy: "hash:shards=2".into(),
            connections: n,
            rejected: 1,
            oldest_connection_ms: Some(n * 1000),
            memory_bytes: n * 4096,
            ..Default::default()
        }
    }

    #[test]
    fn shard_gauges_recent_rejection_rate() {
        let now = 1_000 * MIN;
        let mut o = Observations::default();
        for _ in 0..3 {
            o.record_outcome(now - 1000, "pro", Outcome::Success);
        }
        o.record_outcome(now - 1000, "pro", Outcome::ShardRefused);
        o.record_outcome(now - 20 * MIN, "pro", Outcome::ShardRefused);
        let g = gauges("a", 1).with_recent(&o, now);
        assert_eq!((g.recent_accepted, g.recent_rejected), (3, 1));
        assert_eq!(g.rejection_rate(), Some(0.25));
        assert_eq!(gauges("a", 1).rejection_rate(), None);
    }

    #[test]
    fn user_metrics_replace_gauges_and_add_observations() {
        let now = 1_000 * MIN;
        let mut u = UserMetrics::new("alice", "pro", "hash:shards=2");
        let mut obs = Observations::default();
        obs.record_outcome(now, "pro", Outcome::Success);
        let report = |n: u64| ShardMetrics {
            user_id: "alice".into(),
            gauges: gauges("cm:alice:h0", n),
            observed: obs.clone(),
        };
        u.add_shard(&report(3)).unwrap();
        u.add_shard(&report(5)).unwrap();
        u.add_shard(&ShardMetrics {
            user_id: "alice".into(),
            gauges: gauges("cm:alice:h1", 2),
            observed: Observations::default(),
        })
        .unwrap();
        assert_eq!(u.shards.len(), 2);
        assert_eq!(u.connections(), 7, "the newer gauge replaced the older");
        assert_eq!(u.max_shard_connections(), 5);
        assert_eq!(u.oldest_connection_ms(), Some(5000));
        assert_eq!(u.memory_bytes(), 7 * 4096);
        assert_eq!(u.rejected(), 2);
        assert_eq!(u.observed.total.get("pro").unwrap().counts.successes, 2);
        let err = u
            .add_shard(&ShardMetrics {
                user_id: "bob".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("bob"), "{err}");
        u.remove_shard("cm:alice:h0");
        assert_eq!(u.connections(), 2);
    }

    #[test]
    fn global_merges_users_and_other() {
        let now = 1_000 * MIN;
        let mut g = GlobalMetrics::default();
        let mut a = UserMetrics::new("alice", "pro", "single");
        a.set_gauges(gauges("cm:alice", 4));
        a.observed.record_outcome(now, "pro", Outcome::Success);
        let mut b = UserMetrics::new("bob", "free", "single");
        b.observed.record_outcome(now, "free", Outcome::Unavailable);
        g.add_user(&a);
        let mut part = GlobalMetrics::default();
        part.add_user(&a);
        part.add_user(&b);
        part.other.record_outcome(now, "free", Outcome::Success);
        g.merge(&part);
        assert_eq!(g.users.len(), 2);
        assert_eq!(g.users["alice"].connections(), 4);
        let w = g.window(now, SHORT_WINDOW_MS);
        assert_eq!(w.get("pro").unwrap().counts.successes, 2);
        assert_eq!(w.get("free").unwrap().counts.attempts(), 2);
        assert_eq!(
            g.totals().get("free").unwrap().counts.rejected_unavailable,
            1
        );
        assert_eq!(g.shards().count(), 1);
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<GlobalMetrics>(&json).unwrap(), g);
    }
}
