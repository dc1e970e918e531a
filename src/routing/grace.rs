//! The presence grace window (`PRESENCE_GRACE_MS`, default 0: the platform's timing): a
//! machine whose last socket closes is announced offline only once the window has passed
//! without it coming back; one that comes back within it is announced neither offline nor
//! online again. Pure; the home holds one per user.

use std::collections::BTreeMap;

use crate::routing::view::Transition;

/// Machines waiting out their window at once; past it, an offline is announced at once
/// (and counted).
pub const MAX_PENDING: usize = 1_024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grace {
    /// machine -> when its offline is announced.
    pending: BTreeMap<String, u64>,
    /// Offline notices announced at once because `MAX_PENDING` were waiting.
    pub overflowed: u64,
    /// Drops hidden by the window (the machine came back in time).
    pub hidden: u64,
}

impl Grace {
    /// The transitions to announce now: offline ones wait `grace_ms`; an online for a
    /// machine whose offline waits cancels both.
    pub fn filter(&mut self, ts: Vec<Transition>, now_ms: u64, grace_ms: u64) -> Vec<Transition> {
        if grace_ms == 0 {
            return ts;
        }
        let mut out = Vec::new();
        for t in ts {
            if t.online {
                if self.pending.remove(&t.machine_id).is_some() {
                    self.hidden += 1;
                } else {
                    out.push(t);
                }
            } else if self.pending.len() < MAX_PENDING {
                self.pending.insert(t.machine_id, now_ms + grace_ms);
            } else {
                self.overflowed += 1;
                out.push(t);
            }
        }
        out
    }

    /// The offline notices whose window has passed.
    pub fn due(&mut self, now_ms: u64) -> Vec<Transition> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(m, _)| m.clone())
            .collect();
        due.into_iter()
            .map(|m| {
                self.pending.remove(&m);
                Transition {
                    machine_id: m,
                    online: false,
                }
            })
            .collect()
    }

    pub fn next_due(&self) -> Option<u64> {
        self.pending.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(m: &str, online: bool) -> Transition {
        Transition {
            machine_id: m.into(),
            online,
        }
    }

    #[test]
    fn a_machine_back_within_the_window_is_announced_neither_way() {
        let mut g = Grace::default();
        assert!(g.filter(vec![t("m", false)], 0, 1_000).is_empty());
        assert_eq!(g.next_due(), Some(1_000));
        assert!(g.filter(vec![t("m", true)], 500, 1_000).is_empty());
        assert_eq!(g.hidden, 1);
        assert!(g.due(5_000).is_empty());
    }

    #[test]
    fn a_machine_that_stays_away_is_announced_once_the_window_passed() {
        let mut g = Grace::default();
        g.filter(vec![t("m", false)], 0, 1_000);
        assert!(g.due(999).is_empty());
        assert_eq!(g.due(1_000), vec![t("m", false)]);
        // Then back: announced online as usual.
        assert_eq!(
            g.filter(vec![t("m", true)], 2_000, 1_000),
            vec![t("m", true)]
        );
    }

    #[test]
    fn zero_is_the_platforms_timing_and_the_wait_is_bounded() {
        let mut g = Grace::default();
        let ts = vec![t("a", false), t("a", true)];
        assert_eq!(g.filter(ts.clone(), 0, 0), ts);
        for i in 0..MAX_PENDING {
            g.filter(vec![t(&format!("m{i}"), false)], 0, 1_000);
        }
        assert_eq!(g.filter(vec![t("x", false)], 0, 1_000), vec![t("x", false)]);
        assert_eq!(g.overflowed, 1);
    }
}
