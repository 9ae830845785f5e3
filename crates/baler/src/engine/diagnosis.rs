//! Diagnosis: the engine's own state, read in words.
//!
//! Owns nothing: it reads the other rooms (the pause, the capacity's
//! status, the in-flight table, the waiting submitters, the recent-activity
//! window, the last audit) and says what holds work back and what to change,
//! as `docs/troubleshooting.md` shows case by case. It runs an audit first,
//! so that an accounting mismatch is among its findings.

use std::cmp::Reverse;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::observe::{WindowSecond, RETRY_WINDOW_SECS};
use super::Engine;
use crate::diagnose::{Code, Diagnosis, Finding, Severity};
use crate::settings::Dispatch;

/// How long a batch may run with no maximum operation time before
/// `diagnose()` points it out.
const LONG_RUNNING: Duration = Duration::from_secs(30);

/// The least number of recent batches for a small-batches finding.
const SMALL_BATCHES_MIN: u64 = 20;

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Looks at the engine's own state and says what holds work back.
    pub(super) fn diagnose(&mut self, now: Instant) -> Diagnosis {
        self.audit();
        let mut findings = Vec::new();
        let s = &self.stats;
        let waiting = s.buffered + s.retrying;
        let held = s.pending();

        if self.paused && self.closing.is_none() {
            findings.push(Finding {
                severity: if waiting > 0 {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                code: Code::Paused,
                message: format!(
                    "dispatching is paused with {waiting} operation(s) waiting; call resume() \
                     to dispatch them"
                ),
                numbers: vec![("waiting", waiting as f64)],
            });
        }

        if s.target > 0 && self.cfg.capacity.rate() == Some(0) {
            let status = self.cfg.capacity.status();
            let mut why = Vec::new();
            if let Some(error) = &status.store_error {
                why.push(format!("the lease store cannot be reached ({error})"));
            }
            if let Some((held, total)) = status.partitions {
                why.push(format!("{held} of {total} partitions are leased"));
            }
            match status.reserved {
                Some(0) | None => why.push("no capacity is reserved for this instance".to_owned()),
                Some(r) => why.push(format!("{r} is reserved but none of it is granted")),
            }
            let mut numbers = vec![("target", s.target as f64), ("capacity", 0.0)];
            if let Some((held, total)) = status.partitions {
                numbers.push(("partitions_leased", f64::from(held)));
                numbers.push(("partitions", f64::from(total)));
            }
            if let Some(r) = status.reserved {
                numbers.push(("reserved", r as f64));
            }
            findings.push(Finding {
                severity: Severity::Error,
                code: Code::NoCapacity,
                message: format!(
                    "{} operation(s) with a target of {} wait, but the capacity grants 0 per \
                     second: {}; nothing can be dispatched until capacity is granted (reserve \
                     some capacity so that work always moves)",
                    waiting,
                    s.target,
                    why.join(", ")
                ),
                numbers,
            });
        }

        if let (Some(rate), Some(_)) = (self.cfg.capacity.rate(), self.flights.capacity_wait) {
            if rate > 0 && waiting > 0 {
                let drain = s.target as f64 / rate as f64;
                findings.push(Finding {
                    severity: Severity::Info,
                    code: Code::CapacityBound,
                    message: format!(
                        "{waiting} operation(s) wait for capacity: the target is {} but the \
                         capacity grants {rate} per second, so the capacity sets the pace \
                         (about {drain:.1} s to dispatch what is held); raise the capacity if \
                         the datastore can take more",
                        s.target
                    ),
                    numbers: vec![
                        ("target", s.target as f64),
                        ("capacity", rate as f64),
                        ("waiting", waiting as f64),
                        ("seconds_to_drain", drain),
                    ],
                });
            }
        }

        let max = self.cfg.max_in_flight as u64;
        if s.in_flight_batches >= max && waiting > 0 {
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::InFlightCapReached,
                message: format!(
                    "all {max} in-flight slots are busy and {waiting} operation(s) wait: the \
                     handler is the bottleneck; raise max_in_flight if the datastore can take \
                     more, or make the handler faster"
                ),
                numbers: vec![
                    ("in_flight_batches", s.in_flight_batches as f64),
                    ("max_in_flight", max as f64),
                    ("waiting", waiting as f64),
                ],
            });
        }

        for batch in self.flights.iter() {
            let running = now.saturating_duration_since(batch.started);
            let key = &self.slots[batch.slot].key;
            match self.cfg.max_operation_time {
                Some(limit) if running > limit => findings.push(Finding {
                    severity: Severity::Error,
                    code: Code::BatchOverdue,
                    message: format!(
                        "batch {} (key {key:?}, {} operation(s)) has run {running:?}, past its \
                         maximum operation time of {limit:?}, and still holds its in-flight \
                         slot: its handler blocks the thread, or dropping its future blocks; \
                         use async I/O or spawn_blocking in the handler",
                        batch.id, batch.ops
                    ),
                    numbers: vec![
                        ("batch", batch.id.0 as f64),
                        ("running_seconds", running.as_secs_f64()),
                        ("max_operation_time_seconds", limit.as_secs_f64()),
                    ],
                }),
                None if running > LONG_RUNNING => findings.push(Finding {
                    severity: Severity::Warning,
                    code: Code::BatchRunningLong,
                    message: format!(
                        "batch {} (key {key:?}, {} operation(s)) has been running for \
                         {running:?} and no maximum operation time is set, so a hung handler is \
                         never cut short; set Builder::max_operation_time",
                        batch.id, batch.ops
                    ),
                    numbers: vec![
                        ("batch", batch.id.0 as f64),
                        ("running_seconds", running.as_secs_f64()),
                    ],
                }),
                _ => {}
            }
        }

        let submitters = self.shared.admission.waiting();
        if submitters > 0 {
            let buffer = self.cfg.buffer_size as u64;
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::BufferFull,
                message: format!(
                    "the buffer is full ({held} of {buffer} operations held) and {submitters} \
                     submitter(s) wait for room, each holding its payload: the handler is \
                     slower than the submit rate; \
                     this is backpressure working, but if it lasts, raise max_in_flight or the \
                     capacity, or slow the producers"
                ),
                numbers: vec![
                    ("held", held as f64),
                    ("buffer_size", buffer as f64),
                    ("waiting_submitters", submitters as f64),
                ],
            });
        }

        // The seconds of the window still within it now (the window is
        // trimmed when operations are counted, which may be a while ago).
        let second = now.saturating_duration_since(self.origin).as_secs();
        let mut window = WindowSecond::default();
        for w in &self.observe.window {
            if w.second + RETRY_WINDOW_SECS > second {
                window.add(w);
            }
        }
        let (dispatched, retried) = (window.dispatched, window.retried);
        if retried >= 10 && retried * 2 >= dispatched {
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::RetryStorm,
                message: format!(
                    "{retried} of the {dispatched} operation(s) dispatched in the last \
                     {RETRY_WINDOW_SECS} s were retried: the datastore is refusing work; \
                     look at the handler's errors, lower the capacity, or raise the backoff"
                ),
                numbers: vec![
                    ("retried", retried as f64),
                    ("dispatched", dispatched as f64),
                    ("window_seconds", RETRY_WINDOW_SECS as f64),
                ],
            });
        }

        let max_size = self.cfg.max_batch_size as f64;
        if window.batches >= SMALL_BATCHES_MIN && max_size >= 4.0 {
            let mean_size = window.dispatched as f64 / window.batches as f64;
            let mean_cost = window.cost as f64 / window.batches as f64;
            if mean_size * 4.0 < max_size {
                findings.push(self.small_batches(mean_size, mean_cost, window.batches));
            }
        }

        if let Some((target, recounted)) = self.observe.audit_mismatch {
            findings.push(Finding {
                severity: Severity::Error,
                code: Code::AuditMismatch,
                message: format!(
                    "the target is {target} but what is buffered, retrying and in flight costs \
                     {recounted}: the engine's accounting is wrong; this is a bug in baler, \
                     please report it with this diagnosis"
                ),
                numbers: vec![("target", target as f64), ("recounted", recounted as f64)],
            });
        }

        findings.sort_by_key(|f| Reverse(f.severity));
        Diagnosis {
            findings,
            stats: self.stats.clone(),
        }
    }

    /// Says why recent batches averaged under a quarter of `max_batch_size`.
    fn small_batches(&self, mean_size: f64, mean_cost: f64, batches: u64) -> Finding {
        let limit = self.flights.batch_cost_limit;
        let keys = self.slots.keys();
        let why = if mean_cost * 2.0 >= limit as f64 {
            if limit < self.cfg.max_batch_cost {
                format!(
                    "batches are cut at a cost of {limit}, the capacity's burst (what it \
                     grants in one burst interval); give the capacity a larger burst \
                     (Capacity::provisioned_with_burst) or make operations cheaper"
                )
            } else {
                format!(
                    "batches are cut at max_batch_cost ({limit}); raise it if the datastore \
                     takes bigger batches"
                )
            }
        } else if keys > 1 {
            format!(
                "operations of {keys} different keys are held and never share a batch; use \
                 fewer keys, or no key where batches need not be split"
            )
        } else if self.cfg.dispatch == Dispatch::LoadAware {
            "with Dispatch::LoadAware a batch goes as soon as its key has nothing in flight, \
             which keeps latency low when the load is light; to trade latency for bigger \
             batches, set min_batch_size, or use Dispatch::Linger with a longer linger"
                .to_owned()
        } else {
            format!(
                "batches close when their linger ({:?}) runs out before they fill; raise the \
                 linger to trade latency for bigger batches",
                self.cfg.linger
            )
        };
        let mut numbers = vec![
            ("mean_batch_size", mean_size),
            ("max_batch_size", self.cfg.max_batch_size as f64),
            ("mean_batch_cost", mean_cost),
        ];
        if limit < u64::MAX {
            numbers.push(("batch_cost_limit", limit as f64));
        }
        numbers.push(("batches", batches as f64));
        numbers.push(("keys", keys as f64));
        Finding {
            severity: Severity::Info,
            code: Code::SmallBatches,
            message: format!(
                "the last {batches} batches averaged {mean_size:.1} operation(s) (cost \
                 {mean_cost:.1}) of at most {}: {why}",
                self.cfg.max_batch_size
            ),
            numbers,
        }
    }
}
