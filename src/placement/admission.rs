//! SLO-aware admission: is a shard healthy enough to take a new socket, and when none of a
//! connect's candidates is, is this tier shed (503 + `Retry-After`) or admitted anyway?
//!
//! Health comes from the shard's own recent `MessageLatency` p95 (the last 1..2 minutes of its
//! short ring): message handling is what more sockets on an overloaded object would slow
//! further, and it is the series the tier's latency objective is stated on. Connect admission
//! time is not used: it includes the round trip to the home, which says nothing about the shard.
//! With fewer than [`MIN_SAMPLES`] messages the shard counts as healthy (no evidence, and an
//! idle shard is by definition not overloaded).
//!
//! The runtime's flow: pass 1 tries candidates in the policy's order and skips any that is
//! not [`Health::Healthy`]; if none took the socket, [`fallback`] decides between admitting on
//! the least-bad candidate and shedding. Lower tiers are shed first: a tier's tolerance for
//! latency over target doubles with its rank, and the top tier is never shed for latency.

use std::collections::BTreeMap;

use observability::metrics::{Observations, Series};
use observability::tier::{tier_order, Tier};

/// How far back a shard looks for its p95: with 1-minute slots, the last 1..2 minutes.
pub const ADMISSION_WINDOW_MS: u64 = 60_000;
/// Fewer messages than this in the window: no verdict on latency (a p95 of 5 samples is noise).
pub const MIN_SAMPLES: u64 = 20;
/// `Retry-After` when every candidate is full (matches the protocol's `shard_full`).
pub const FULL_RETRY_AFTER_SECS: u32 = 1;
/// Shed `Retry-After` bounds before jitter: recovery shows in a p95 over a minute or so, and a
/// short wait would only bring the same clients back into the same overload.
pub const SHED_RETRY_MIN_SECS: u32 = 5;
pub const SHED_RETRY_MAX_SECS: u32 = 60;

/// What a shard knows about its own load when a connect arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardLoad {
    /// Open sockets.
    pub open: u64,
    /// `SHARD_MAX_CONNECTIONS`.
    pub cap: u64,
    /// Recent `MessageLatency` p95 in ms, if any messages were handled.
    pub p95_ms: Option<f64>,
    /// Messages behind `p95_ms`.
    pub samples: u64,
}

impl ShardLoad {
    /// Reads the p95 of `MessageLatency` over [`ADMISSION_WINDOW_MS`] (all tiers: a shard
    /// belongs to one user) from the shard's own, full observations.
    pub fn from_observations(obs: &Observations, now_ms: u64, open: u64, cap: u64) -> Self {
        let h = obs.latency_window(now_ms, ADMISSION_WINDOW_MS, Series::MessageLatency);
        ShardLoad {
            open,
            cap,
            p95_ms: h.quantile(0.95),
            samples: h.count(),
        }
    }
}

/// A shard's fitness for one more socket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    Healthy,
    /// Recent p95 over the tier's target; `ratio` = p95 / target (> 1).
    OverLatency {
        ratio: f64,
    },
    /// At its cap: takes nothing, whatever the tier.
    Full,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// The shard's health against its tier's latency target (`Tier::latency_p95_ms`).
pub fn health(load: &ShardLoad, target_p95_ms: u32) -> Health {
    if load.open >= load.cap {
        return Health::Full;
    }
    let Some(p95) = load.p95_ms.filter(|_| load.samples >= MIN_SAMPLES) else {
        return Health::Healthy;
    };
    // The config rejects a zero target; guard anyway rather than divide by zero.
    let ratio = p95 / f64::from(target_p95_ms.max(1));
    if ratio > 1.0 {
        Health::OverLatency { ratio }
    } else {
        Health::Healthy
    }
}

/// A tier's place among the configured tiers: 0 = lowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierRank {
    pub rank: usize,
    pub count: usize,
}

impl TierRank {
    /// The rank of `name` among `tiers`, ordered by [`tier_order`]; `None` if not configured.
    pub fn of(tiers: &BTreeMap<String, Tier>, name: &str) -> Option<TierRank> {
        let order = tier_order(tiers);
        let rank = order.iter().position(|(n, _)| *n == name)?;
        Some(TierRank {
            rank,
            count: order.len(),
        })
    }

    pub fn is_top(&self) -> bool {
        self.rank.saturating_add(1) >= self.count
    }
}

/// The latency ratio above which a tier is shed when no candidate is healthy: `2^rank`
/// (lowest tier: any overage; next: more than double its target; ...). `None` for the top
/// tier: it is admitted on the least-bad shard whatever the latency, since shedding it would
/// refuse the customers the lower tiers were shed to protect.
pub fn shed_threshold(rank: TierRank) -> Option<f64> {
    if rank.is_top() {
        return None;
    }
    let exp = i32::try_from(rank.rank).unwrap_or(i32::MAX);
    Some(2f64.powi(exp))
}

/// Shed or not, for a tier whose best candidate is `severity` times over its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShedDecision {
    Admit,
    Shed { retry_after_secs: u32 },
}

pub fn shed(rank: TierRank, severity: f64, jitter: u8) -> ShedDecision {
    match shed_threshold(rank) {
        Some(t) if severity > t => ShedDecision::Shed {
            retry_after_secs: retry_after_secs(severity, jitter),
        },
        _ => ShedDecision::Admit,
    }
}

/// `Retry-After` for a shed connect: 5 s per unit of severity, within 5..=60 s, plus up to
/// 25 % from `jitter` (a random byte) so shed clients do not return in step.
pub fn retry_after_secs(severity: f64, jitter: u8) -> u32 {
    let base = if severity.is_finite() {
        // Clamped first, so the cast cannot truncate.
        (5.0 * severity).ceil().clamp(
            f64::from(SHED_RETRY_MIN_SECS),
            f64::from(SHED_RETRY_MAX_SECS),
        ) as u32
    } else {
        SHED_RETRY_MAX_SECS
    };
    base + base * u32::from(jitter) / (4 * 255)
}

/// The least-bad candidate that can still take a socket: the lowest latency ratio among
/// those not full (a healthy one counts as ratio 1). Ties keep the policy's order.
pub fn least_bad(candidates: &[Health]) -> Option<(usize, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for (i, h) in candidates.iter().enumerate() {
        let r = match h {
            Health::Healthy => 1.0,
            Health::OverLatency { ratio } => *ratio,
            Health::Full => continue,
        };
        if best.is_none_or(|(_, b)| r < b) {
            best = Some((i, r));
        }
    }
    best
}

/// The second pass, when pass 1 found no healthy candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fallback {
    /// Admit on `candidates[index]` although it is over target by `ratio`.
    AdmitOn { index: usize, ratio: f64 },
    /// 503 + `Retry-After`: this tier is shed.
    Shed {
        retry_after_secs: u32,
        severity: f64,
    },
    /// Every candidate is full: 503 + `Retry-After: 1`, whatever the tier.
    AllFull { retry_after_secs: u32 },
}

/// Decides the second pass for a connect of tier `rank` over `candidates` (in the policy's
/// order). `jitter` is a random byte for the `Retry-After`.
pub fn fallback(candidates: &[Health], rank: TierRank, jitter: u8) -> Fallback {
    let Some((index, ratio)) = least_bad(candidates) else {
        return Fallback::AllFull {
            retry_after_secs: FULL_RETRY_AFTER_SECS,
        };
    };
    match shed(rank, ratio, jitter) {
        ShedDecision::Admit => Fallback::AdmitOn { index, ratio },
        ShedDecision::Shed { retry_after_secs } => Fallback::Shed {
            retry_after_secs,
            severity: ratio,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> BTreeMap<String, Tier> {
        serde_json::from_str(observability::tier::DEFAULT_TIERS).unwrap()
    }

    fn load(open: u64, p95: Option<f64>, samples: u64) -> ShardLoad {
        ShardLoad {
            open,
            cap: 200,
            p95_ms: p95,
            samples,
        }
    }

    #[test]
    fn health_full_over_latency_and_healthy() {
        assert_eq!(health(&load(200, None, 0), 100), Health::Full);
        assert_eq!(health(&load(250, Some(1.0), 100), 100), Health::Full);
        assert_eq!(
            health(
                &ShardLoad {
                    cap: 0,
                    ..load(0, None, 0)
                },
                100
            ),
            Health::Full
        );
        assert_eq!(health(&load(199, None, 0), 100), Health::Healthy);
        assert_eq!(health(&load(10, Some(100.0), 50), 100), Health::Healthy);
        assert_eq!(
            health(&load(10, Some(250.0), 50), 100),
            Health::OverLatency { ratio: 2.5 }
        );
        // Too few samples: no verdict.
        assert_eq!(
            health(&load(10, Some(5000.0), MIN_SAMPLES - 1), 100),
            Health::Healthy
        );
        assert!(matches!(
            health(&load(10, Some(5000.0), MIN_SAMPLES), 100),
            Health::OverLatency { .. }
        ));
        // A zero target does not divide by zero.
        assert!(matches!(
            health(&load(1, Some(2.0), 50), 0),
            Health::OverLatency { ratio } if ratio == 2.0
        ));
    }

    #[test]
    fn load_from_observations_uses_recent_message_latency() {
        let now = 1_000 * 60_000 + 30_000;
        let mut o = Observations::default();
        // Old and slow: outside the admission window.
        for _ in 0..100 {
            o.record_latency(now - 10 * 60_000, "pro", Series::MessageLatency, 5000.0);
        }
        // Recent and fast; a slow other series that must not count.
        for _ in 0..30 {
            o.record_latency(now - 1_000, "pro", Series::MessageLatency, 10.0);
            o.record_latency(now - 1_000, "pro", Series::DoResponse, 9000.0);
        }
        let l = ShardLoad::from_observations(&o, now, 7, 200);
        assert_eq!(l.samples, 30);
        assert_eq!((l.open, l.cap), (7, 200));
        let p95 = l.p95_ms.unwrap();
        assert!(p95 > 9.6 && p95 <= 12.8, "{p95}");
        assert_eq!(health(&l, 200), Health::Healthy);
        assert!(matches!(health(&l, 5), Health::OverLatency { .. }));
    }

    #[test]
    fn tiers_rank_by_limit() {
        let t = tiers();
        let order: Vec<&str> = tier_order(&t).iter().map(|(n, _)| *n).collect();
        assert_eq!(order, vec!["free", "pro", "enterprise"]);
        assert_eq!(
            TierRank::of(&t, "free"),
            Some(TierRank { rank: 0, count: 3 })
        );
        assert_eq!(TierRank::of(&t, "enterprise").unwrap().rank, 2);
        assert!(TierRank::of(&t, "enterprise").unwrap().is_top());
        assert!(!TierRank::of(&t, "pro").unwrap().is_top());
        assert_eq!(TierRank::of(&t, "platinum"), None);
        // Equal limits: availability, then name.
        let t: BTreeMap<String, Tier> = serde_json::from_str(
            r#"{"b":{"limit":10,"latencyP95Ms":1,"availability":99.9},
                "a":{"limit":10,"latencyP95Ms":1,"availability":99.9},
                "c":{"limit":10,"latencyP95Ms":1,"availability":99.0}}"#,
        )
        .unwrap();
        let order: Vec<&str> = tier_order(&t).iter().map(|(n, _)| *n).collect();
        assert_eq!(order, vec!["c", "a", "b"]);
    }

    #[test]
    fn thresholds_double_per_rank_and_spare_the_top() {
        let r = |rank, count| TierRank { rank, count };
        assert_eq!(shed_threshold(r(0, 3)), Some(1.0));
        assert_eq!(shed_threshold(r(1, 3)), Some(2.0));
        assert_eq!(shed_threshold(r(2, 3)), None);
        assert_eq!(shed_threshold(r(2, 4)), Some(4.0));
        // A single configured tier is the top tier: never shed for latency.
        assert_eq!(shed_threshold(r(0, 1)), None);
    }

    #[test]
    fn lower_tiers_are_shed_first() {
        let t = tiers();
        let rank = |n: &str| TierRank::of(&t, n).unwrap();
        let sheds = |tier: &str, severity: f64| {
            matches!(shed(rank(tier), severity, 0), ShedDecision::Shed { .. })
        };
        // Barely over target: only free is shed.
        assert!(sheds("free", 1.1));
        assert!(!sheds("pro", 1.1));
        assert!(!sheds("enterprise", 1.1));
        // Three times over: free and pro shed, enterprise still admitted.
        assert!(sheds("free", 3.0));
        assert!(sheds("pro", 3.0));
        assert!(!sheds("enterprise", 3.0));
        // Exactly at pro's threshold: not yet.
        assert!(!sheds("pro", 2.0));
        // However bad it gets, the top tier is admitted.
        assert!(!sheds("enterprise", 1000.0));
        assert!(!sheds("enterprise", f64::INFINITY));
        // Monotone in severity and in rank: once a tier sheds, worse never admits it and a
        // lower tier sheds too.
        let names = ["free", "pro", "enterprise"];
        let mut sev = 1.0;
        while sev < 20.0 {
            for (i, n) in names.iter().enumerate() {
                if sheds(n, sev) {
                    assert!(sheds(n, sev * 1.5), "{n} {sev}");
                    for lower in &names[..i] {
                        assert!(sheds(lower, sev), "{lower} not shed while {n} is at {sev}");
                    }
                }
            }
            sev += 0.25;
        }
    }

    #[test]
    fn retry_after_grows_with_severity_within_bounds() {
        assert_eq!(retry_after_secs(1.01, 0), 6);
        assert_eq!(retry_after_secs(0.5, 0), SHED_RETRY_MIN_SECS);
        assert_eq!(retry_after_secs(3.0, 0), 15);
        assert_eq!(retry_after_secs(100.0, 0), SHED_RETRY_MAX_SECS);
        assert_eq!(retry_after_secs(f64::INFINITY, 0), SHED_RETRY_MAX_SECS);
        assert_eq!(retry_after_secs(f64::NAN, 0), SHED_RETRY_MAX_SECS);
        // Jitter adds at most 25 %.
        assert_eq!(retry_after_secs(100.0, 255), 75);
        assert_eq!(retry_after_secs(3.0, 255), 18);
        for j in 0..=255u8 {
            let r = retry_after_secs(2.0, j);
            assert!((10..=12).contains(&r), "{j}: {r}");
        }
        let mut last = 0;
        for s in 1..40 {
            let r = retry_after_secs(s as f64 * 0.5, 0);
            assert!(r >= last);
            last = r;
        }
    }

    #[test]
    fn least_bad_skips_full_and_keeps_policy_order_on_ties() {
        use Health::*;
        assert_eq!(least_bad(&[]), None);
        assert_eq!(least_bad(&[Full, Full]), None);
        assert_eq!(
            least_bad(&[
                OverLatency { ratio: 3.0 },
                Full,
                OverLatency { ratio: 1.5 },
                OverLatency { ratio: 1.5 }
            ]),
            Some((2, 1.5))
        );
        assert_eq!(
            least_bad(&[OverLatency { ratio: 3.0 }, Healthy]),
            Some((1, 1.0))
        );
    }

    #[test]
    fn fallback_admits_sheds_or_reports_full() {
        use Health::*;
        let t = tiers();
        let rank = |n: &str| TierRank::of(&t, n).unwrap();
        let cands = [Full, OverLatency { ratio: 2.5 }, OverLatency { ratio: 1.6 }];
        assert_eq!(
            fallback(&cands, rank("enterprise"), 0),
            Fallback::AdmitOn {
                index: 2,
                ratio: 1.6
            }
        );
        assert_eq!(
            fallback(&cands, rank("pro"), 0),
            Fallback::AdmitOn {
                index: 2,
                ratio: 1.6
            }
        );
        assert_eq!(
            fallback(&cands, rank("free"), 0),
            Fallback::Shed {
                retry_after_secs: 8,
                severity: 1.6
            }
        );
        for tier in ["free", "pro", "enterprise"] {
            assert_eq!(
                fallback(&[Full, Full], rank(tier), 200),
                Fallback::AllFull {
                    retry_after_secs: FULL_RETRY_AFTER_SECS
                }
            );
        }
        // Pass 1 would have taken a healthy candidate; if one shows up here anyway
        // (it changed in between) it is the least bad and nobody is shed.
        assert_eq!(
            fallback(&[OverLatency { ratio: 9.0 }, Healthy], rank("free"), 0),
            Fallback::AdmitOn {
                index: 1,
                ratio: 1.0
            }
        );
    }
}
