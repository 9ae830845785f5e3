//! Stats, diagnosis and metrics.
//!
//! Metrics go through the `metrics` facade, labelled `queue`:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `baler_queue_enqueued_total` | counter | jobs added by producers of this process |
//! | `baler_queue_results_total` | counter | results producers of this process received (label `status`: `ok`, `failed`, `dead`) |
//! | `baler_queue_duplicate_results_total` | counter | second results of a job added twice (an enqueue sent again after a lost reply), deleted on arrival |
//! | `baler_queue_completed_total` | counter | results workers of this process wrote (label `status`: `ok`, `failed`) |
//! | `baler_queue_retried_total` | counter | attempts scheduled again |
//! | `baler_queue_dead_lettered_total` | counter | jobs moved to `{q}:dead` |
//! | `baler_queue_stale_discarded_total` | counter | completions discarded because the claim had passed on |
//! | `baler_queue_reclaimed_total` | counter | jobs taken over after their lease ran out |
//! | `baler_queue_handed_back_total` | counter | jobs handed back at a worker's shutdown |
//! | `baler_queue_outstanding` | gauge | jobs a producer waits on |
//! | `baler_queue_held` | gauge | jobs a worker holds |

use std::fmt;
use std::time::Duration;

pub use baler::Severity;

/// The queue as Redis sees it; see [`Queue::stats`](crate::Queue::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Jobs in the jobs stream that have not finished: waiting or being
    /// run, each job of a bundle counted.
    pub length: u64,
    /// Entries claimed by a worker and not yet completed: a job, or a
    /// bundle of jobs a producer sent together (see
    /// [`ProducerBuilder::bundles`](crate::ProducerBuilder::bundles)).
    pub pending: u64,
    /// Entries no worker has claimed yet (the consumer group's lag): jobs,
    /// or bundles of them, as for `pending`.
    pub waiting: u64,
    /// Jobs waiting out a retry backoff.
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
    /// The consumers of the group, live or dead.
    pub consumers: Vec<ConsumerStats>,
}

/// One consumer (a worker process start) of the jobs stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Its name.
    pub name: String,
    /// Entries it holds (jobs, or bundles of them).
    pub pending: u64,
    /// How long since it last read or renewed a claim.
    pub idle: Duration,
}

/// A finding's stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueCode {
    /// Jobs wait and no consumer has been seen within a lease.
    NoLiveConsumer,
    /// A consumer holds jobs and has been silent past the lease: its jobs
    /// will be (or are being) reclaimed.
    LeasesExpiring,
    /// The dead-letter stream holds entries.
    DeadLetters,
}

impl QueueCode {
    /// The code as a short, stable string.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueCode::NoLiveConsumer => "no-live-consumer",
            QueueCode::LeasesExpiring => "leases-expiring",
            QueueCode::DeadLetters => "dead-letters",
        }
    }
}

/// One thing [`Queue::diagnose`](crate::Queue::diagnose) found.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFinding {
    /// How serious it is.
    pub severity: Severity,
    /// What it is, stably.
    pub code: QueueCode,
    /// What is wrong and what to do.
    pub message: String,
    /// The numbers behind it.
    pub numbers: Vec<(&'static str, f64)>,
}

impl fmt::Display for QueueFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} [{}] {}",
            self.severity,
            self.code.as_str(),
            self.message
        )
    }
}

/// What [`Queue::diagnose`](crate::Queue::diagnose) found, with the stats it
/// looked at.
///
/// ```no_run
/// # async fn example(queue: baler_queue::Queue) -> Result<(), redis::RedisError> {
/// let diagnosis = queue.diagnose().await?;
/// for finding in &diagnosis.findings {
///     eprintln!("{finding}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDiagnosis {
    /// The findings, most serious first.
    pub findings: Vec<QueueFinding>,
    /// The stats as of the diagnosis.
    pub stats: QueueStats,
}

impl QueueDiagnosis {
    /// The finding with this code, if there is one.
    pub fn find(&self, code: QueueCode) -> Option<&QueueFinding> {
        self.findings.iter().find(|f| f.code == code)
    }

    /// Whether nothing was found.
    pub fn is_healthy(&self) -> bool {
        self.findings.is_empty()
    }
}

pub(crate) fn diagnose(stats: QueueStats, lease: Duration) -> QueueDiagnosis {
    let mut findings = Vec::new();
    let live = stats.consumers.iter().filter(|c| c.idle < lease).count();
    if stats.waiting > 0 && live == 0 {
        findings.push(QueueFinding {
            severity: Severity::Error,
            code: QueueCode::NoLiveConsumer,
            message: format!(
                "{} job(s) wait and no worker has read the queue within a lease ({lease:?}); \
                 start a worker, or check that the workers reach this Redis",
                stats.waiting
            ),
            numbers: vec![
                ("waiting", stats.waiting as f64),
                ("consumers", stats.consumers.len() as f64),
            ],
        });
    }
    let expired: Vec<&super::ConsumerStats> = stats
        .consumers
        .iter()
        .filter(|c| c.pending > 0 && c.idle >= lease)
        .collect();
    if !expired.is_empty() {
        let jobs: u64 = expired.iter().map(|c| c.pending).sum();
        findings.push(QueueFinding {
            severity: Severity::Warning,
            code: QueueCode::LeasesExpiring,
            message: format!(
                "{} consumer(s) hold {jobs} job(s) and have been silent past the lease: they \
                 likely died, and their jobs are reclaimed by live workers; if this repeats, \
                 look for workers crashing or blocking their runtime",
                expired.len()
            ),
            numbers: vec![("consumers", expired.len() as f64), ("jobs", jobs as f64)],
        });
    }
    if stats.dead > 0 {
        findings.push(QueueFinding {
            severity: Severity::Warning,
            code: QueueCode::DeadLetters,
            message: format!(
                "{} job(s) are in the dead-letter stream; read their reasons there and \
                 re-enqueue or remove them",
                stats.dead
            ),
            numbers: vec![("dead", stats.dead as f64)],
        });
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    QueueDiagnosis { findings, stats }
}

pub(crate) fn count(name: &'static str, queue: &str, n: u64) {
    metrics::counter!(name, "queue" => queue.to_owned()).increment(n);
}

pub(crate) fn count_status(name: &'static str, queue: &str, status: &'static str, n: u64) {
    metrics::counter!(name, "queue" => queue.to_owned(), "status" => status).increment(n);
}

pub(crate) fn gauge(name: &'static str, queue: &str, value: f64) {
    metrics::gauge!(name, "queue" => queue.to_owned()).set(value);
}
