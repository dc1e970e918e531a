//! Time-based rotation: epochs, their lifecycle, and the drain plan that spreads the
//! reconnects of an ending epoch over its drain window.
//!
//! Epoch `E` covers `[E * period, (E + 1) * period)` (Unix ms). New connections go to the
//! current epoch's shard; when `E` ends, its shard drains over `[end, end + drain)`: each
//! socket is told to reconnect at its own time in that window (and lands on epoch `E + 1`),
//! and whatever is left at `end + drain` is closed. `drain <= period`, so at most one old
//! epoch is draining at any time.

use crate::duration::Secs;
use thiserror::Error;

/// Shortest rotation period (10 s): shorter would spend the connection's life reconnecting.
pub const MIN_PERIOD_SECS: u64 = 10;
/// Longest rotation period (7 days).
pub const MAX_PERIOD_SECS: u64 = 7 * 86_400;
/// Shortest drain window (1 s): a zero window would reconnect every socket at once.
pub const MIN_DRAIN_SECS: u64 = 1;
/// Upper bound of the `retryAfterMs` hint. The socket is closed right after the hint, so
/// the hint is downtime for the client: the spreading is done by *when* each socket is
/// told ([`DrainSlot::notify_at_ms`]); the hint only de-synchronises sockets that the
/// runtime notifies in the same batch (for example in one alarm).
pub const MAX_RETRY_AFTER_MS: u64 = 1_000;

/// Why a rotation schedule was rejected by [`Rotation::try_new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RotationError {
    /// The period is outside [`MIN_PERIOD_SECS`]..=[`MAX_PERIOD_SECS`].
    #[error("period must be between 10s and 7d, got `{}`", Secs(*period_secs))]
    PeriodOutOfRange {
        /// The rejected period in seconds.
        period_secs: u64,
    },
    /// The drain window is shorter than [`MIN_DRAIN_SECS`].
    #[error("drain must be at least 1s (and at most the period), got `{}`", Secs(*drain_secs))]
    DrainTooShort {
        /// The rejected drain in seconds.
        drain_secs: u64,
    },
    /// The drain window is longer than the period (two old epochs would drain at once).
    #[error(
        "drain `{}` is longer than period `{}`; drain must be at most the period so that only one old epoch drains at a time",
        Secs(*drain_secs),
        Secs(*period_secs)
    )]
    DrainLongerThanPeriod {
        /// The rejected drain in seconds.
        drain_secs: u64,
        /// The period in seconds.
        period_secs: u64,
    },
}

/// A validated rotation schedule: `period` in 10s..=7d, `drain` in 1s..=period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rotation {
    period_secs: u32,
    drain_secs: u32,
}

/// Where an epoch is in its life at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpochPhase {
    /// The epoch has not started yet (its shard should not exist yet).
    Future,
    /// The epoch is current: its shard takes new connections.
    Current,
    /// The epoch has ended and its shard is inside the drain window: tell sockets to
    /// reconnect according to the [`DrainPlan`]; take no new connections.
    Draining,
    /// The drain window is over: close whatever is left (close code 1012).
    Expired,
}

impl Rotation {
    /// Validates a schedule given in seconds.
    pub fn try_new(period_secs: u64, drain_secs: u64) -> Result<Self, RotationError> {
        if !(MIN_PERIOD_SECS..=MAX_PERIOD_SECS).contains(&period_secs) {
            return Err(RotationError::PeriodOutOfRange { period_secs });
        }
        if drain_secs < MIN_DRAIN_SECS {
            return Err(RotationError::DrainTooShort { drain_secs });
        }
        if drain_secs > period_secs {
            return Err(RotationError::DrainLongerThanPeriod {
                drain_secs,
                period_secs,
            });
        }
        // Both are <= MAX_PERIOD_SECS here, which fits in u32.
        match (u32::try_from(period_secs), u32::try_from(drain_secs)) {
            (Ok(period_secs), Ok(drain_secs)) => Ok(Self {
                period_secs,
                drain_secs,
            }),
            _ => Err(RotationError::PeriodOutOfRange { period_secs }),
        }
    }

    /// The period in seconds.
    pub fn period_secs(&self) -> u32 {
        self.period_secs
    }

    /// The drain window in seconds.
    pub fn drain_secs(&self) -> u32 {
        self.drain_secs
    }

    /// The period in milliseconds.
    #[inline]
    pub fn period_ms(&self) -> u64 {
        u64::from(self.period_secs) * 1000
    }

    /// The drain window in milliseconds.
    #[inline]
    pub fn drain_ms(&self) -> u64 {
        u64::from(self.drain_secs) * 1000
    }

    /// The epoch containing `now_ms`: `floor(now_ms / period_ms)`.
    #[inline]
    pub fn epoch_at(&self, now_ms: u64) -> u64 {
        // period_ms >= 10_000 by construction; checked_div keeps the code panic-free anyway.
        now_ms.checked_div(self.period_ms()).unwrap_or(0)
    }

    /// When `epoch` starts (Unix ms, saturating).
    #[inline]
    pub fn epoch_start_ms(&self, epoch: u64) -> u64 {
        epoch.saturating_mul(self.period_ms())
    }

    /// When `epoch` ends, exclusive (= when `epoch + 1` starts, saturating).
    #[inline]
    pub fn epoch_end_ms(&self, epoch: u64) -> u64 {
        epoch.saturating_add(1).saturating_mul(self.period_ms())
    }

    /// When `epoch`'s drain window closes: its end plus the drain (saturating).
    #[inline]
    pub fn drain_end_ms(&self, epoch: u64) -> u64 {
        self.epoch_end_ms(epoch).saturating_add(self.drain_ms())
    }

    /// The phase of `epoch` at `now_ms`.
    pub fn phase(&self, epoch: u64, now_ms: u64) -> EpochPhase {
        if now_ms < self.epoch_start_ms(epoch) {
            EpochPhase::Future
        } else if now_ms < self.epoch_end_ms(epoch) {
            EpochPhase::Current
        } else if now_ms < self.drain_end_ms(epoch) {
            EpochPhase::Draining
        } else {
            EpochPhase::Expired
        }
    }

    /// Should a shard of `epoch` be draining at `now_ms`? (Its epoch is over and the drain
    /// window is not.)
    pub fn is_draining(&self, epoch: u64, now_ms: u64) -> bool {
        self.phase(epoch, now_ms) == EpochPhase::Draining
    }

    /// The drain plan of `epoch`'s shard for the `sockets` it holds when the drain starts.
    pub fn drain_plan(&self, epoch: u64, sockets: u32) -> DrainPlan {
        DrainPlan {
            start_ms: self.epoch_end_ms(epoch),
            window_ms: self.drain_ms(),
            sockets: sockets.max(1),
        }
    }
}

/// How one epoch's shard spreads its `sockets` reconnects over the drain window.
///
/// The window is cut into `sockets` equal strata; socket `index` is told to reconnect at
/// a jittered time inside stratum `index`. Stratifying (instead of drawing every time at
/// random) guarantees an even spread whatever the randomness: the reconnect rate is
/// `sockets / window` with no bursts. If the runtime has no stable socket order, it can
/// pass `index = random % sockets`, which gives a uniform random spread instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DrainPlan {
    start_ms: u64,
    window_ms: u64,
    sockets: u32,
}

/// When one socket is told to reconnect, and the hint it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DrainSlot {
    /// Send `{"event":"reconnect","data":{"reason":"rotation","retryAfterMs":..}}` and close
    /// with 1012 at (or as soon as possible after) this Unix ms.
    pub notify_at_ms: u64,
    /// The `retryAfterMs` hint: `0..=min(window / sockets, MAX_RETRY_AFTER_MS)`.
    pub retry_after_ms: u64,
}

impl DrainPlan {
    /// A plan for an arbitrary window (the rotation helpers build it from an epoch).
    pub fn new(start_ms: u64, window_ms: u64, sockets: u32) -> Self {
        Self {
            start_ms,
            window_ms,
            sockets: sockets.max(1),
        }
    }

    /// Start of the drain window (Unix ms): the epoch's end.
    pub fn start_ms(&self) -> u64 {
        self.start_ms
    }

    /// End of the drain window (Unix ms, exclusive): close what is left from here on.
    pub fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.window_ms)
    }

    /// Number of sockets the plan spreads (at least 1).
    pub fn sockets(&self) -> u32 {
        self.sockets
    }

    /// The slot of socket `index` (`0..sockets`; larger indices are clamped to the last
    /// stratum) given 64 random bits for that socket: the low 32 bits place the socket
    /// inside its stratum, the high 32 bits pick the `retryAfterMs` hint.
    pub fn slot(&self, index: u32, random: u64) -> DrainSlot {
        let index = index.min(self.sockets - 1);
        let lo = random & 0xffff_ffff;
        let hi = random >> 32;
        // offset = window * (index + lo / 2^32) / sockets, exact in u128 and < window.
        let numerator = u128::from(self.window_ms) * ((u128::from(index) << 32) | u128::from(lo));
        let offset = numerator / (u128::from(self.sockets) << 32);
        let offset = u64::try_from(offset).unwrap_or(self.window_ms);
        let stratum_ms = self.window_ms / u64::from(self.sockets);
        let cap = stratum_ms.min(MAX_RETRY_AFTER_MS);
        // hi / 2^32 * (cap + 1), in 0..=cap.
        let retry_after_ms = (hi * (cap + 1)) >> 32;
        DrainSlot {
            notify_at_ms: self.start_ms.saturating_add(offset),
            retry_after_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(p: u64, d: u64) -> Rotation {
        Rotation::try_new(p, d).unwrap()
    }

    #[test]
    fn validates_the_schedule() {
        assert!(Rotation::try_new(10, 1).is_ok());
        assert!(Rotation::try_new(MAX_PERIOD_SECS, MAX_PERIOD_SECS).is_ok());
        assert_eq!(
            Rotation::try_new(9, 1),
            Err(RotationError::PeriodOutOfRange { period_secs: 9 })
        );
        assert_eq!(
            Rotation::try_new(MAX_PERIOD_SECS + 1, 1),
            Err(RotationError::PeriodOutOfRange {
                period_secs: MAX_PERIOD_SECS + 1
            })
        );
        assert_eq!(
            Rotation::try_new(600, 0),
            Err(RotationError::DrainTooShort { drain_secs: 0 })
        );
        assert_eq!(
            Rotation::try_new(600, 601),
            Err(RotationError::DrainLongerThanPeriod {
                drain_secs: 601,
                period_secs: 600
            })
        );
    }

    #[test]
    fn error_messages_use_canonical_durations() {
        assert_eq!(
            Rotation::try_new(600, 900).unwrap_err().to_string(),
            "drain `15m` is longer than period `10m`; drain must be at most the period so that only one old epoch drains at a time"
        );
        assert_eq!(
            Rotation::try_new(5, 1).unwrap_err().to_string(),
            "period must be between 10s and 7d, got `5s`"
        );
    }

    #[test]
    fn epochs_change_exactly_at_period_boundaries() {
        let r = rot(600, 120);
        assert_eq!(r.epoch_at(0), 0);
        assert_eq!(r.epoch_at(599_999), 0);
        assert_eq!(r.epoch_at(600_000), 1);
        assert_eq!(r.epoch_start_ms(3), 1_800_000);
        assert_eq!(r.epoch_end_ms(3), 2_400_000);
        assert_eq!(r.drain_end_ms(3), 2_520_000);
        assert_eq!(r.epoch_end_ms(u64::MAX), u64::MAX);
    }

    #[test]
    fn phases_follow_the_lifecycle() {
        let r = rot(600, 120);
        assert_eq!(r.phase(3, 1_799_999), EpochPhase::Future);
        assert_eq!(r.phase(3, 1_800_000), EpochPhase::Current);
        assert_eq!(r.phase(3, 2_399_999), EpochPhase::Current);
        assert_eq!(r.phase(3, 2_400_000), EpochPhase::Draining);
        assert!(r.is_draining(3, 2_519_999));
        assert_eq!(r.phase(3, 2_520_000), EpochPhase::Expired);
        assert!(!r.is_draining(3, 2_520_000));
        assert!(!r.is_draining(3, 2_000_000));
    }

    #[test]
    fn slots_stay_inside_their_strata() {
        let plan = rot(600, 120).drain_plan(3, 4);
        assert_eq!(plan.start_ms(), 2_400_000);
        assert_eq!(plan.end_ms(), 2_520_000);
        for (index, random) in [
            (0u32, 0u64),
            (0, u64::MAX),
            (1, 0),
            (3, u64::MAX),
            (9, 12345),
        ] {
            let slot = plan.slot(index, random);
            let stratum = u64::from(index.min(3));
            assert!(
                slot.notify_at_ms >= 2_400_000 + stratum * 30_000,
                "{index} {slot:?}"
            );
            assert!(
                slot.notify_at_ms < 2_400_000 + (stratum + 1) * 30_000,
                "{index} {slot:?}"
            );
            assert!(slot.retry_after_ms <= MAX_RETRY_AFTER_MS);
        }
        assert_eq!(plan.slot(0, 0).notify_at_ms, 2_400_000);
        assert_eq!(plan.slot(3, u64::MAX).notify_at_ms, 2_519_999);
        assert_eq!(plan.slot(0, u64::MAX).retry_after_ms, MAX_RETRY_AFTER_MS);
        assert_eq!(plan.slot(0, 0xffff_ffff).retry_after_ms, 0);
    }

    #[test]
    fn strata_narrower_than_a_millisecond_floor_to_whole_ms() {
        // 4789 sockets over 1 s: socket 3857's exact place is 805.387.. ms; the slot is
        // the floor (805 ms), never earlier, never in the next socket's millisecond.
        let plan = DrainPlan::new(0, 1_000, 4_789);
        assert_eq!(plan.slot(3_857, 0).notify_at_ms, 805);
        assert_eq!(plan.slot(3_857, 0xffff_ffff).notify_at_ms, 805);
        assert_eq!(plan.slot(4_788, 0xffff_ffff).notify_at_ms, 999);
        assert_eq!(plan.slot(4_788, 0).retry_after_ms, 0);
    }

    #[test]
    fn retry_hint_is_bounded_by_the_stratum_width() {
        // 1000 sockets over 2 s: strata are 2 ms wide, so is the hint.
        let plan = DrainPlan::new(0, 2_000, 1_000);
        for i in 0..1000u32 {
            let slot = plan.slot(i, u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!(slot.retry_after_ms <= 2);
        }
    }

    #[test]
    fn zero_sockets_is_treated_as_one() {
        let plan = DrainPlan::new(100, 1_000, 0);
        assert_eq!(plan.sockets(), 1);
        assert!(plan.slot(0, 7).notify_at_ms < 1_100);
    }
}
