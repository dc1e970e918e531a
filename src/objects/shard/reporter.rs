//! How a non-home shard tells its home what changed: one report in flight, each the latest
//! snapshot (presence, counts, metrics), after a short gap; a failed report is retried by the
//! alarm. The loop runs detached from the event that started it, so no connect or close waits.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use worker::console_error;

use crate::object_api::{Placement, ReportAck, ReportedMetrics, ShardReport};
use crate::runtime;

/// How long a report may take before it is left to the retry.
pub(super) const REPORT_TIMEOUT_MS: u32 = 2_000;
/// Pause before retrying a failed report.
const RETRY_MS: u64 = 1_000;
/// The least time between two reports after a presence change.
pub const PRESENCE_GAP_MS: u32 = 25;
/// The least time between two reports when only counts changed.
pub const COUNTS_GAP_MS: u32 = 250;

/// A shard's reporting state: the next report (the latest snapshot), the metrics waiting to
/// ride it, whether a sender runs, and when a failed report is retried.
#[derive(Debug, Default)]
pub(super) struct Reporter {
    /// The last snapshot's number.
    pub seq: u64,
    next: Option<ShardReport>,
    presence_dirty: bool,
    metrics: Option<ReportedMetrics>,
    running: bool,
    pub retry_at: Option<u64>,
}

impl Reporter {
    /// Makes `report` the next one; true when no sender runs and the caller must start one.
    pub fn offer(&mut self, report: ShardReport, presence: bool) -> bool {
        self.next = Some(report);
        self.presence_dirty |= presence;
        !std::mem::replace(&mut self.running, true)
    }

    /// Whether a report is waiting or on its way.
    pub fn busy(&self) -> bool {
        self.running || self.next.is_some() || self.retry_at.is_some()
    }

    pub fn add_metrics(&mut self, m: ReportedMetrics) {
        self.metrics = Some(match self.metrics.take() {
            Some(mut older) => {
                older.observed.merge(&m.observed);
                older.gauges = m.gauges;
                older
            }
            None => m,
        });
    }
}

/// The detached loop that sends a shard's reports to its home: one in flight, each the
/// latest snapshot, with the gap after each; a failure is left for the alarm's retry.
pub(super) struct Sender {
    pub env: worker::Env,
    pub state: Rc<worker::State>,
    pub clock: Rc<crate::runtime::AlarmClock>,
    pub home: String,
    pub reporter: Rc<RefCell<Reporter>>,
    pub announced: Rc<Cell<u64>>,
    pub placement: Rc<RefCell<Placement>>,
}

impl Sender {
    pub async fn run(self) {
        let mut first = true;
        loop {
            let gap = {
                let r = self.reporter.borrow();
                if r.presence_dirty {
                    PRESENCE_GAP_MS
                } else {
                    COUNTS_GAP_MS
                }
            };
            if !first {
                runtime::sleep(gap).await;
            }
            first = false;
            let next = {
                let mut r = self.reporter.borrow_mut();
                let Some(mut report) = r.next.take() else {
                    r.running = false;
                    return;
                };
                report.metrics = r.metrics.take();
                r.presence_dirty = false;
                report
            };
            if let Err(e) = self.send(&next).await {
                console_error!("report to {} failed: {e}", self.home);
                let retry = runtime::now_ms() + RETRY_MS;
                {
                    let mut r = self.reporter.borrow_mut();
                    if let Some(m) = next.metrics.clone() {
                        r.add_metrics(m);
                    }
                    r.next.get_or_insert(next);
                    r.retry_at = Some(retry);
                    r.running = false;
                }
                if let Err(e) = self.clock.arm(&self.state, retry).await {
                    console_error!("could not schedule the report retry: {e}");
                }
                return;
            }
        }
    }

    async fn send(&self, report: &ShardReport) -> worker::Result<()> {
        let stub = runtime::object(&self.env, crate::object_api::SHARD_BINDING, &self.home)?;
        let ack: ReportAck = runtime::timeout(
            REPORT_TIMEOUT_MS,
            runtime::ask(&stub, Some(&self.home), report),
        )
        .await
        .unwrap_or_else(|| Err(worker::Error::RustError("timed out".into())))?;
        self.announced
            .set(self.announced.get().max(ack.view_version));
        *self.placement.borrow_mut() = ack.placement;
        Ok(())
    }
}
