//! What a registry object keeps, pure: one record per user, each under its own storage key,
//! so a push costs one user's read-modify-write (O(1) in the number of users) and no value
//! grows with the user count. Pushes are numbered by their sender, so one that is retried
//! (its answer lost, or the registry's write failed) is applied once.
//!
//! The sender is the user's directory: it numbers its pushes (`PushId`), keeps the one in
//! flight until it is acknowledged and resends exactly that one ([`Outgoing`]); new
//! observations wait for the next push. The registry applies a push only when its sequence
//! number is above the last one it applied for that user from that sender.

use serde::{Deserialize, Serialize};

use crate::metrics::UserMetrics;

/// Storage keys of user records start with this.
pub const USER_PREFIX: &str = "u:";
/// Where registries before this layout kept every user in one value; split on first load.
pub const LEGACY_KEY: &str = "registry";
/// A user with no open sockets is forgotten after this long without reports.
pub const FORGET_IDLE_MS: u64 = 3_600_000;

/// The storage key of a user's record.
pub fn key(user_id: &str) -> String {
    format!("{USER_PREFIX}{user_id}")
}

/// Who sent a push and its number. `sender` is random per directory state (53 bits, for
/// JavaScript's numbers), so a directory that lost its state starts a new sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushId {
    pub sender: u64,
    pub seq: u64,
}

/// A directory's push: its user's gauges and new observations, numbered. Without `push`
/// (an older sender) it is applied as it comes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    #[serde(flatten)]
    pub metrics: UserMetrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushId>,
}

/// One user as the registry keeps it (one storage value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    pub metrics: UserMetrics,
    pub last_report_ms: u64,
    /// The last push applied.
    #[serde(default)]
    pub applied: Option<PushId>,
}

/// What a push does to a user's record.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingest {
    /// The record to store (and then keep in memory).
    Apply(Box<UserRecord>),
    /// Already applied: nothing changes.
    Duplicate,
}

/// When a user's home next pushes, metrics pending at `now_ms`: the first instant after
/// `now_ms` at the user's own phase of the `every_ms` cycle (from a hash of its id), so never
/// later than `every_ms`. Homes that all observed something at once (a deploy, a burst of
/// connects) still push spread over the cycle instead of together, and a home that keeps
/// observing pushes once a cycle, at its phase.
pub fn next_push_at(now_ms: u64, every_ms: u64, user_id: &str) -> u64 {
    let every = every_ms.max(1);
    let phase = crate::stats::id_hash(user_id) % every;
    let at = now_ms - now_ms % every + phase;
    if at > now_ms {
        at
    } else {
        at + every
    }
}

/// A push against the user's current record (`None`: a new user). Gauges are replaced,
/// observations added, tier and policy follow the newest report.
pub fn ingest(have: Option<&UserRecord>, push: Push, now_ms: u64) -> Ingest {
    if let (Some(last), Some(id)) = (have.and_then(|h| h.applied), push.push) {
        if last.sender == id.sender && id.seq <= last.seq {
            return Ingest::Duplicate;
        }
    }
    let u = push.metrics;
    let mut rec = have.cloned().unwrap_or_else(|| UserRecord {
        metrics: UserMetrics::new(&u.user_id, &u.tier, &u.policy),
        ..UserRecord::default()
    });
    let m = &mut rec.metrics;
    // The directory's shard list replaces the user's: shards that left are gone.
    m.shards = u.shards;
    if !u.tier.is_empty() {
        m.tier = u.tier;
    }
    if !u.policy.is_empty() {
        m.policy = u.policy;
    }
    m.observed.merge(&u.observed);
    m.observed.prune(now_ms);
    rec.last_report_ms = now_ms;
    rec.applied = push.push.or(rec.applied);
    Ingest::Apply(Box::new(rec))
}

/// Whether a user is forgotten: quiet for [`FORGET_IDLE_MS`] with no open sockets.
pub fn is_stale(rec: &UserRecord, now_ms: u64) -> bool {
    now_ms.saturating_sub(rec.last_report_ms) > FORGET_IDLE_MS && rec.metrics.connections() == 0
}

/// The directory's side: the push in flight is kept (and persisted) until acknowledged, and
/// resent as it is, so a retry never carries a delta twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Outgoing {
    /// 0 until the first push picks a random one.
    pub sender: u64,
    pub next_seq: u64,
    pub unacked: Option<Push>,
}

impl Outgoing {
    /// The push to send: the unacknowledged one, else `build()` numbered anew. `random` is
    /// used once, for the sender id.
    pub fn next(&mut self, random: u64, build: impl FnOnce() -> UserMetrics) -> Push {
        if let Some(p) = &self.unacked {
            return p.clone();
        }
        if self.sender == 0 {
            // 53 bits, never 0.
            self.sender = (random & ((1 << 53) - 1)).max(1);
        }
        self.next_seq = self.next_seq.saturating_add(1);
        let p = Push {
            metrics: build(),
            push: Some(PushId {
                sender: self.sender,
                seq: self.next_seq,
            }),
        };
        self.unacked = Some(p.clone());
        p
    }

    /// The registry answered for push `id`: it is done.
    pub fn acked(&mut self, id: Option<PushId>) {
        if self.unacked.as_ref().map(|p| p.push) == Some(id) {
            self.unacked = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::{Outcome, ShardGauges};

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn pushes_are_spread_over_the_cycle_and_never_late() {
        let every = 60_000;
        let now = 1_700_000_012_345;
        // A thousand homes that all observed something at the same instant push over the
        // whole next minute (each within it), not together.
        let mut per_ten_s = [0u32; 6];
        for i in 0..1_000 {
            let at = next_push_at(now, every, &format!("user-{i}"));
            assert!(at > now && at <= now + every, "{at}");
            per_ten_s[((at - now - 1) / 10_000) as usize] += 1;
        }
        assert!(
            per_ten_s.iter().all(|n| (120..=220).contains(n)),
            "{per_ten_s:?}"
        );
        // One home: the same phase every cycle, so one push a cycle however often it
        // observes.
        let a = next_push_at(now, every, "alice");
        assert_eq!(next_push_at(a, every, "alice"), a + every);
        assert_eq!(next_push_at(a - 1, every, "alice"), a);
        assert_eq!(next_push_at(a + 1, every, "alice"), a + every);
        assert_eq!(next_push_at(5, 0, "alice"), 6);
    }

    fn metrics(user: &str, successes: u32, connections: u64) -> UserMetrics {
        let mut u = UserMetrics::new(user, "pro", "single");
        u.set_gauges(ShardGauges {
            shard: format!("cm:{user}"),
            tier: "pro".into(),
            connections,
            ..ShardGauges::default()
        });
        for _ in 0..successes {
            u.observed.record_outcome(NOW, "pro", Outcome::Success);
        }
        u
    }

    fn successes(r: &UserRecord) -> u64 {
        r.metrics.observed.total.all_tiers().counts.successes
    }

    fn applied(i: Ingest) -> UserRecord {
        match i {
            Ingest::Apply(r) => *r,
            Ingest::Duplicate => panic!("duplicate"),
        }
    }

    #[test]
    fn a_retried_push_is_applied_once() {
        let mut out = Outgoing::default();
        let first = out.next(42, || metrics("alice", 3, 1));
        let rec = applied(ingest(None, first.clone(), NOW));
        assert_eq!(successes(&rec), 3);
        // The answer was lost: the directory sends the same push again, not a new merge.
        let again = out.next(7, || metrics("alice", 100, 1));
        assert_eq!(again, first);
        assert_eq!(ingest(Some(&rec), again, NOW + 1), Ingest::Duplicate);
        out.acked(first.push);
        assert!(out.unacked.is_none());
        let second = out.next(7, || metrics("alice", 2, 0));
        assert_eq!(second.push, Some(PushId { sender: 42, seq: 2 }));
        let rec = applied(ingest(Some(&rec), second, NOW + 2));
        assert_eq!(successes(&rec), 5);
        assert_eq!(rec.metrics.connections(), 0, "gauges replaced");
        // An older push arriving late changes nothing.
        assert_eq!(ingest(Some(&rec), first, NOW + 3), Ingest::Duplicate);
    }

    #[test]
    fn a_write_that_failed_leaves_the_record_as_it_was() {
        // The registry stores the new record before keeping it: when the write fails it
        // keeps `have`, and the retry (same id) is applied against it, once.
        let have = applied(ingest(
            None,
            Outgoing::default().next(1, || metrics("b", 1, 1)),
            NOW,
        ));
        let mut out = Outgoing {
            sender: 9,
            ..Outgoing::default()
        };
        let p = out.next(0, || metrics("b", 4, 1));
        let _failed_write = ingest(Some(&have), p.clone(), NOW);
        let retried = applied(ingest(
            Some(&have),
            out.next(0, || metrics("b", 50, 1)),
            NOW,
        ));
        assert_eq!(successes(&retried), 5);
        assert_eq!(retried.applied, p.push);
    }

    #[test]
    fn a_new_sender_starts_its_own_sequence_and_unnumbered_pushes_apply() {
        let rec = applied(ingest(
            None,
            Outgoing::default().next(5, || metrics("c", 1, 1)),
            NOW,
        ));
        // A directory that lost its state: another sender, seq 1 again.
        let fresh = Outgoing::default().next(6, || metrics("c", 1, 1));
        let rec = applied(ingest(Some(&rec), fresh, NOW));
        assert_eq!(successes(&rec), 2);
        let old = Push {
            metrics: metrics("c", 1, 1),
            push: None,
        };
        assert_eq!(successes(&applied(ingest(Some(&rec), old, NOW))), 3);
    }

    #[test]
    fn pushes_parse_with_and_without_their_number() {
        let p = Outgoing::default().next(77, || metrics("d", 1, 2));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""push":{"sender":77,"seq":1}"#), "{json}");
        assert_eq!(serde_json::from_str::<Push>(&json).unwrap(), p);
        let bare = serde_json::to_string(&metrics("d", 1, 2)).unwrap();
        let old: Push = serde_json::from_str(&bare).unwrap();
        assert_eq!((old.push, old.metrics.user_id.as_str()), (None, "d"));
    }

    #[test]
    fn quiet_users_without_sockets_are_forgotten() {
        let rec = applied(ingest(
            None,
            Outgoing::default().next(1, || metrics("e", 1, 0)),
            NOW,
        ));
        assert!(!is_stale(&rec, NOW + FORGET_IDLE_MS));
        assert!(is_stale(&rec, NOW + FORGET_IDLE_MS + 1));
        let open = applied(ingest(
            None,
            Outgoing::default().next(1, || metrics("f", 1, 2)),
            NOW,
        ));
        assert!(!is_stale(&open, NOW + 10 * FORGET_IDLE_MS));
    }

    #[test]
    fn a_record_stays_far_below_the_value_limit() {
        // A busy user's hour (every series, both rings) in one value: the limit of a
        // SQLite-backed object's value is 2 MB, and one user never approaches it.
        let mut u = metrics("g", 0, 5);
        for m in 0..60u64 {
            for i in 0..200u64 {
                let t = NOW - m * 60_000 + i;
                for s in crate::metrics::Series::ALL {
                    u.observed
                        .record_latency(t, "pro", s, (i % 97) as f64 * 1.7);
                }
                u.observed.record_outcome(t, "pro", Outcome::Success);
            }
        }
        let rec = applied(ingest(None, Outgoing::default().next(1, || u), NOW));
        let len = serde_json::to_string(&rec).unwrap().len();
        eprintln!("one busy user's record: {len} bytes");
        assert!(len < 64 * 1024, "{len}");
    }
}
