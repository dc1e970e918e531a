//! One in-flight computation per key, shared by every caller that asks while it runs.
//!
//! Under the platform's churn load hundreds of stats calls a round ask for the same user;
//! each used to fan out to every shard. A caller that arrives while a fan-out for its key is
//! running waits for that one instead, so its answer is at most one fan-out old: it began
//! before the caller asked (docs/architecture.md, "Fewer hops"). When the running caller is
//! dropped (its request was cancelled), its waiters run the work themselves.

use futures::channel::oneshot;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

/// Keys with work in flight, each with the callers waiting for it. Single-threaded (one
/// isolate), so a `RefCell` suffices; it is never borrowed across an await.
pub struct SingleFlight<T> {
    waiting: RefCell<HashMap<String, Vec<oneshot::Sender<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            waiting: RefCell::new(HashMap::new()),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` for `key` unless it is already running, in which case waits for and
    /// returns that result. Answers whether this caller shared another's result.
    pub async fn run<F: Future<Output = T>>(
        &self,
        key: &str,
        work: impl FnOnce() -> F,
    ) -> (T, bool) {
        let joined = {
            let mut w = self.waiting.borrow_mut();
            match w.get_mut(key) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    w.insert(key.to_string(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = joined {
            match rx.await {
                Ok(v) => return (v, true),
                // The leader was dropped; its guard removed the key, so work alone.
                Err(oneshot::Canceled) => return (work().await, false),
            }
        }
        let guard = Leader { flight: self, key };
        let v = work().await;
        for tx in guard.finish() {
            let _ = tx.send(v.clone());
        }
        (v, false)
    }

    /// How many keys have work in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// Removes the key when the leading caller finishes or is dropped, so a cancelled leader
/// never leaves waiters hanging (their senders drop with the entry).
struct Leader<'a, T> {
    flight: &'a SingleFlight<T>,
    key: &'a str,
}

impl<T> Leader<'_, T> {
    fn finish(self) -> Vec<oneshot::Sender<T>> {
        let waiters = self.flight.waiting.borrow_mut().remove(self.key);
        std::mem::forget(self);
        waiters.unwrap_or_default()
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        self.flight.waiting.borrow_mut().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn concurrent_callers_share_one_run() {
        let flight = Rc::new(SingleFlight::<u32>::default());
        let runs = Rc::new(Cell::new(0));
        let (open_tx, open_rx) = oneshot::channel::<()>();
        let open_rx = Rc::new(RefCell::new(Some(open_rx)));
        let results = Rc::new(RefCell::new(Vec::new()));
        let mut pool = LocalPool::new();
        for _ in 0..3 {
            let (flight, runs, open_rx, results) = (
                flight.clone(),
                runs.clone(),
                open_rx.clone(),
                results.clone(),
            );
            pool.spawner()
                .spawn_local(async move {
                    let r = flight
                        .run("u1", || async {
                            runs.set(runs.get() + 1);
                            let rx = open_rx.borrow_mut().take();
                            if let Some(rx) = rx {
                                let _ = rx.await;
                            }
                            7
                        })
                        .await;
                    results.borrow_mut().push(r);
                })
                .unwrap();
        }
        pool.run_until_stalled();
        assert_eq!(flight.in_flight(), 1);
        assert!(results.borrow().is_empty());
        open_tx.send(()).unwrap();
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
                    .run(key, || async {
                        runs.set(runs.get() + 1);
                        runs.get()
                    })
                    .await;
                assert!(!shared);
                assert_eq!(v, runs.get());
            }
        });
        assert_eq!(runs.get(), 3);
    }

    #[test]
    fn a_dropped_leader_lets_waiters_run_their_own() {
        let flight = Rc::new(SingleFlight::<u32>::default());
        let mut pool = LocalPool::new();
        // The leader never finishes: its future is dropped with the pool's first task.
        let leader = {
            let flight = flight.clone();
            async move { flight.run("u", futures::future::pending::<u32>).await }
        };
        let mut leader = Box::pin(leader);
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(leader.as_mut().poll(&mut cx).is_pending());
        assert_eq!(flight.in_flight(), 1);
        let follower = {
            let flight = flight.clone();
            async move { flight.run("u", || async { 9 }).await }
        };
        let mut follower = Box::pin(follower);
        assert!(follower.as_mut().poll(&mut cx).is_pending());
        drop(leader);
        assert_eq!(flight.in_flight(), 0);
        let r = pool.run_until(follower);
        assert_eq!(r, (9, false));
    }
}
