//! Self-diagnosis: the engine answers "why?" in words.
//!
//! [`Batcher::diagnose`](crate::Batcher::diagnose) asks the engine to look
//! at its own state and returns [`Finding`]s: each with a severity, a stable
//! [`Code`] to match on, a sentence that says what is wrong and what to do,
//! and the numbers behind it. No finding means nothing is holding work back.

use std::fmt;

use crate::stats::Stats;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing; nothing is stuck.
    Info,
    /// Work is slowed or held back.
    Warning,
    /// Work cannot make progress, or the engine's accounting is wrong.
    Error,
}

/// A finding's stable code: match on it, alert on it, look it up in
/// `docs/troubleshooting.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// Dispatching is paused with work waiting.
    Paused,
    /// Work is waiting but the capacity grants nothing.
    NoCapacity,
    /// Work is waiting for the capacity's tokens: the capacity sets the pace.
    CapacityBound,
    /// Every in-flight slot is busy and work is waiting.
    InFlightCapReached,
    /// A batch has run past its maximum operation time.
    BatchOverdue,
    /// A batch has run for long with no maximum operation time to stop it.
    BatchRunningLong,
    /// The buffer is full and submitters are waiting.
    BufferFull,
    /// A large share of recent operations were retried.
    RetryStorm,
    /// The target differs from the cost of what is held.
    AuditMismatch,
    /// Recent batches averaged under a quarter of the maximum batch size.
    SmallBatches,
}

impl Code {
    /// The code as a short, stable string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Paused => "paused",
            Code::NoCapacity => "no-capacity",
            Code::CapacityBound => "capacity-bound",
            Code::InFlightCapReached => "in-flight-cap-reached",
            Code::BatchOverdue => "batch-overdue",
            Code::BatchRunningLong => "batch-running-long",
            Code::BufferFull => "buffer-full",
            Code::RetryStorm => "retry-storm",
            Code::AuditMismatch => "audit-mismatch",
            Code::SmallBatches => "small-batches",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing the engine found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// What it is, stably.
    pub code: Code,
    /// What is wrong and what to do, in a sentence or two.
    pub message: String,
    /// The numbers behind it, by name.
    pub numbers: Vec<(&'static str, f64)>,
}

impl Finding {
    /// The number called `name`, if the finding has one.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.numbers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{level} [{}] {}", self.code, self.message)?;
        if !self.numbers.is_empty() {
            f.write_str(" (")?;
            for (i, (name, value)) in self.numbers.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{name}={value}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// What [`Batcher::diagnose`](crate::Batcher::diagnose) found, with the
/// stats it looked at.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// The findings, most serious first.
    pub findings: Vec<Finding>,
    /// The stats as of the diagnosis.
    pub stats: Stats,
}

impl Diagnosis {
    /// The finding with this code, if there is one.
    pub fn find(&self, code: Code) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }

    /// Whether nothing was found.
    pub fn is_healthy(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            return f.write_str("healthy: nothing is holding work back");
        }
        for (i, finding) in self.findings.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// What a capacity source can tell about why it grants what it grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapacityStatus {
    /// The capacity reserved for this instance alone, if the source has a part
    /// like that.
    pub reserved: Option<u64>,
    /// Partitions this instance holds leases on, and how many there are.
    pub partitions: Option<(u32, u32)>,
    /// Why the lease store cannot be reached, if it cannot.
    pub store_error: Option<String>,
}

impl CapacityStatus {
    /// A status with these facts.
    pub fn new(
        reserved: Option<u64>,
        partitions: Option<(u32, u32)>,
        store_error: Option<String>,
    ) -> Self {
        CapacityStatus {
            reserved,
            partitions,
            store_error,
        }
    }
}
