//! One in-flight computation per key, shared by every caller that asks while it runs.
//!
//! Under the platform's churn load hundreds of stats calls a round ask for the same user;
//! each used to fan out to every shard. A caller that arrives while a fan-out for its key is
//! running waits for that one instead, so its answer is at most one fan-out old: it began
//! before the caller asked (docs/architecture.md, "Why these choices").
//!
//! Followers poll on their own timer instead of being woken by the leader. In workerd a
//! request whose only pending work belongs to another request is cancelled as hung, and a
//! Rust task woken from another request's callback runs in that request's context, where the
//! response it then builds is an I/O object of the wrong request ("Cannot perform I/O on
//! behalf of a different request"). Both happened under churn load with a channel (705 and
//! 1,868 errors in one run each); a timer of the follower's own keeps it and its
//! continuation in its own request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

/// One running computation: its result once the leader has it.
struct Slot<T> {
    result: RefCell<Option<T>>,
    /// The leader finished or was dropped (its request cancelled) without a result.
    over: Cell<bool>,
}

/// Keys with work in flight. Single-threaded (one isolate), so `RefCell` suffices; it is
/// never borrowed across an await.
pub struct SingleFlight<T> {
    running: RefCell<HashMap<String, Rc<Slot<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            running: RefCell::new(HashMap::new()),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` for `key` unless it is already running. A caller that finds it running
    /// awaits `tick()` up to `max_ticks` times, checking for the result after each, then runs
    /// `work` itself (also when the leader was dropped). Answers whether this caller shared
    /// another's result.
    pub async fn run<F, S>(
        &self,
        key: &str,
        mut tick: impl FnMut() -> S,
        max_ticks: u32,
        work: impl FnOnce() -> F,
    ) -> (T, bool)
    where
        F: Future<Output = T>,
        S: Future<Output = ()>,
    {
        let running = self.running.borrow().get(key).cloned();
        if let Some(slot) = running {
            for _ in 0..max_ticks {
                tick().await;
                if let Some(v) = slot.result.borrow().clone() {
                    return (v, true);
                }
                if slot.over.get() {
                    break;
                }
            }
            return (work().await, false);
        }
        let slot = Rc::new(Slot {
            result: RefCell::new(None),
            over: Cell::new(false),
        });
        self.running
            .borrow_mut()
            .insert(key.to_string(), slot.clone());
        let guard = Leader {
            flight: self,
            key,
            slot,
        };
        let v = work().await;
        *guard.slot.result.borrow_mut() = Some(v.clone());
        drop(guard);
        (v, false)
    }

    /// How many keys have work in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.running.borrow().len()
    }
}

/// Ends the flight when the leading caller finishes or is dropped: later callers start a new
/// one, and followers of a dropped leader stop waiting at their next tick.
struct Leader<'a, T> {
    flight: &'a SingleFlight<T>,
    key: &'a str,
    slot: Rc<Slot<T>>,
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        self.slot.over.set(true);
        let mut running = self.flight.running.borrow_mut();
        if running
            .get(self.key)
            .is_some_and(|s| Rc::ptr_eq(s, &self.slot))
        {
            running.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Pending once, then ready: a tick that lets the other tasks run.
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    fn yield_now() -> YieldNow {
        YieldNow(false)
    }

    #[test]
    fn concurrent_callers_share_one_run() {
        let flight = Rc::new(SingleFlight::<u32>::default());
        let runs = Rc::new(Cell::new(0));
        let results = Rc::new(RefCell::new(Vec::new()));
        let mut pool = LocalPool::new();
        for _ in 0..3 {
            let (flight, runs, results) = (flight.clone(), runs.clone(), results.clone());
            pool.spawner()
                .spawn_local(async move {
                    let r = flight
                        .run("u1", yield_now, 1000, || async {
                            runs.set(runs.get() + 1);
                            for _ in 0..5 {
                                yield_now().await;
                            }
                            7
                        })
                        .await;
                    results.borrow_mut().push(r);
                })
                .unwrap();
        }
        pool.run();
        assert_eq!(runs.get(), 1);
        let mut r = results.borrow().clone();
        r.sort();
        assert_eq!(r, vec![(7, false), (7, true), (7, true)]);
        assert_eq!(flight.in_flight(), 0);
    }

    #[test]
    fn different_keys_run_separately_and_later_calls_run_again() {
        let flight = SingleFlight::<u32>::default();
        let runs = Cell::new(0);
        let mut pool = LocalPool::new();
        pool.run_until(async {
            for key in ["a", "b", "a"] {
                let (v, shared) = flight
                    .run(key, yield_now, 1000, || async {
                        runs.set(runs.get() + 1);
                        runs.get()
                    })
                    .await;
                assert!(!shared);
                assert_eq!(v, runs.get());
            }
        });
        assert_eq!(runs.get(), 3);
        assert_eq!(flight.in_flight(), 0);
    }

    #[test]
    fn a_dropped_leader_lets_waiters_run_their_own() {
        let flight = SingleFlight::<u32>::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut leader =
            Box::pin(flight.run("u", yield_now, 1000, futures::future::pending::<u32>));
        assert!(leader.as_mut().poll(&mut cx).is_pending());
        assert_eq!(flight.in_flight(), 1);
        let mut follower = Box::pin(flight.run("u", yield_now, 1000, || async { 9 }));
        assert!(follower.as_mut().poll(&mut cx).is_pending());
        drop(leader);
        assert_eq!(flight.in_flight(), 0);
        assert_eq!(LocalPool::new().run_until(follower), (9, false));
    }

    #[test]
    fn an_impatient_follower_runs_its_own_and_the_leader_still_finishes() {
        let flight = SingleFlight::<u32>::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let gate = Cell::new(false);
        let mut leader = Box::pin(flight.run("u", yield_now, 1000, || async {
            while !gate.get() {
                yield_now().await;
            }
            1
        }));
        assert!(leader.as_mut().poll(&mut cx).is_pending());
        // No patience at all: the follower does not wait for the blocked leader.
        let mut pool = LocalPool::new();
        assert_eq!(
            pool.run_until(flight.run("u", yield_now, 0, || async { 2 })),
            (2, false)
        );
        gate.set(true);
        assert_eq!(pool.run_until(leader), (1, false));
        assert_eq!(flight.in_flight(), 0);
    }
}
