//! The batch handler: writes each batch to the sink and knows, even when the
//! engine stops waiting for it, whether the batch reached the table.
//!
//! # Why writes run detached
//!
//! When a shutdown deadline passes (the second Ctrl-C), the engine drops the
//! handler's future and reports the batch's records as abandoned. Dropping a
//! database write half-way does not undo it: a SQLite commit on a blocking
//! thread finishes anyway, and a PostgreSQL `COMMIT` already sent may still
//! succeed. So each write runs on a task of its own, which the handler only
//! awaits, and the handler and the task agree, under one small lock, on what
//! happened:
//!
//! - the handler returned the write's result: the engine resolves the
//!   records with it, as usual;
//! - the handler was dropped first, and the write then committed (or had
//!   committed just before): the records are in the table although the engine
//!   abandoned them, and they are listed in [`Writer::late_commits`].
//!
//! After an abandoning shutdown, [`Writer::settle`] waits for the detached
//! writes to finish, and the records not written are the abandoned ones less
//! the late commits: nothing is both in the table and in the replay file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{Batch, Handler, HandlerResult, Outcome};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::input::Record;
use crate::sink::{Sink, SinkError};

/// The handler that writes batches into a [`Sink`].
#[derive(Debug, Clone)]
pub struct Writer {
    sink: Arc<Sink>,
    tracker: TaskTracker,
    late: Arc<Mutex<Vec<u64>>>,
}

/// Where one batch's write stands, as the handler and its write task see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// The write finished; `true` if it committed.
    Finished(bool),
    /// The handler's future was dropped before the write finished.
    Dropped,
}

struct Shared {
    state: Mutex<State>,
    seqs: Vec<u64>,
    late: Arc<Mutex<Vec<u64>>>,
}

impl Shared {
    fn record_late(&self) {
        self.late
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(&self.seqs);
    }
}

/// Set when the handler's future is dropped before it returned.
struct DropGuard {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            // Committed, but the engine never heard: the records are written.
            State::Finished(true) => self.shared.record_late(),
            State::Finished(false) | State::Dropped => {}
            State::Running => *state = State::Dropped,
        }
    }
}

impl Writer {
    /// A handler writing into `sink`.
    pub fn new(sink: Sink) -> Self {
        Writer {
            sink: Arc::new(sink),
            tracker: TaskTracker::new(),
            late: Arc::default(),
        }
    }

    /// The sink written to.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Waits up to `limit` for every detached write to finish. Returns
    /// whether they all did.
    pub async fn settle(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }

    /// The records whose write committed after the engine had stopped
    /// waiting for it.
    pub fn late_commits(&self) -> Vec<u64> {
        self.late.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Handler<Record> for Writer {
    /// When the batch was committed.
    type Output = Instant;
    type Error = SinkError;

    async fn handle(&self, batch: Batch<Record>) -> HandlerResult<Instant, SinkError> {
        let rows: Vec<Record> = batch.items().to_vec();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Running),
            seqs: rows.iter().map(|r| r.seq).collect(),
            late: self.late.clone(),
        });
        let mut guard = DropGuard {
            shared: shared.clone(),
            armed: true,
        };
        let sink = self.sink.clone();
        let n = rows.len();
        let task = self.tracker.spawn(async move {
            let result = sink.write(rows).await.map(|()| Instant::now());
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if *state == State::Dropped {
                if result.is_ok() {
                    shared.record_late();
                }
            } else {
                *state = State::Finished(result.is_ok());
            }
            result
        });
        let result = task.await.unwrap_or_else(|e| {
            Err(SinkError::Write {
                rows: n,
                reason: format!("the write task failed: {e}"),
                transient: false,
            })
        });
        // From here the engine receives the result: nothing is late.
        guard.armed = false;
        match result {
            Ok(at) => Ok(batch.done_all(at)),
            Err(e) if e.is_transient() => Ok((0..n).map(|_| Outcome::Retry(e.clone())).collect()),
            Err(e) => Err(e),
        }
    }
}
