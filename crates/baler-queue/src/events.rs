//! Events: what happened to jobs, for whoever listens. A bounded broadcast:
//! a slow listener misses events (and is told how many), it never holds up
//! producers or workers.

use std::fmt;

use tokio::sync::broadcast;

use crate::JobId;

/// Something that happened to a job, seen from this process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueEvent {
    /// A producer's job was added to the jobs stream.
    Enqueued {
        /// The job.
        job_id: JobId,
    },
    /// A worker wrote a job's result (success or final failure).
    Completed {
        /// The job.
        job_id: JobId,
        /// Whether the handler succeeded.
        ok: bool,
    },
    /// A worker scheduled a job for another attempt.
    Retried {
        /// The job.
        job_id: JobId,
        /// Attempts made so far.
        attempts: u32,
    },
    /// A worker moved a job to the dead-letter stream.
    DeadLettered {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
    /// A worker's completion was discarded because its claim had passed to
    /// another worker (its lease lapsed). The other worker's result counts.
    StaleCompletionDiscarded {
        /// The job.
        job_id: JobId,
        /// The worker whose completion was discarded.
        consumer: String,
    },
    /// A worker took over a job whose lease had run out.
    Reclaimed {
        /// The job.
        job_id: JobId,
        /// How many times the job has now been delivered.
        deliveries: u64,
    },
    /// A worker handed a job back to the queue at shutdown.
    HandedBack {
        /// The job.
        job_id: JobId,
    },
}

/// Why [`QueueEvents::recv`] returned no event.
pub type RecvError = baler::RecvError;

/// A listener's stream of [`QueueEvent`]s; see [`Queue::events`](crate::Queue::events).
pub struct QueueEvents {
    rx: broadcast::Receiver<QueueEvent>,
}

impl QueueEvents {
    pub(crate) fn new(rx: broadcast::Receiver<QueueEvent>) -> Self {
        QueueEvents { rx }
    }

    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] if events were missed, [`RecvError::Closed`]
    /// once the queue handle and everything made from it are gone.
    pub async fn recv(&mut self) -> Result<QueueEvent, RecvError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => RecvError::Lagged(n),
            broadcast::error::RecvError::Closed => RecvError::Closed,
        })
    }

    /// The next event if one is waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Option<QueueEvent>, RecvError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
        }
    }
}

impl fmt::Debug for QueueEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueEvents")
            .field("pending", &self.rx.len())
            .finish()
    }
}
