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

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// For a tracked input: which records are produced and not yet
    /// committed, from which each write works out the watermark it commits.
    watermark: Option<Arc<Mutex<Watermark>>>,
    /// Records given to the sink that an earlier run had written already.
    passed_over: Arc<AtomicU64>,
}

/// The records produced and not yet committed, in input order.
///
/// Invariant: every record numbered up to `last` that is not in `open` is in
/// the table. So a batch may commit, with its rows, the watermark "everything
/// below the first open record that is not in this batch": the records of
/// this batch are in the table once its transaction is, and the others below
/// were committed before. Records leave `open` only after their commit, so a
/// watermark is never ahead of the table; a record that fails stays open and
/// holds the watermark back, to be written again by the next run.
#[derive(Debug, Default)]
struct Watermark {
    open: std::collections::BTreeSet<u64>,
    last: u64,
}

impl Watermark {
    fn for_batch(&self, batch: &[u64]) -> u64 {
        self.open
            .iter()
            .find(|seq| batch.binary_search(seq).is_err())
            .map_or(self.last, |first| first - 1)
    }
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
            watermark: None,
            passed_over: Arc::default(),
        }
    }

    /// A handler writing into `sink`, which [`Sink::track`]s an input whose
    /// records up to `resume_after` are in the table: each batch commits the
    /// input's watermark with its rows. [`produced`](Self::produced) must be
    /// told of every record before it is submitted.
    pub fn tracking(sink: Sink, resume_after: u64) -> Self {
        let mut writer = Writer::new(sink);
        writer.watermark = Some(Arc::new(Mutex::new(Watermark {
            open: Default::default(),
            last: resume_after,
        })));
        writer
    }

    /// Notes that record `seq` is about to be submitted. Records must be
    /// produced in increasing order.
    pub fn produced(&self, seq: u64) {
        if let Some(w) = &self.watermark {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            debug_assert!(seq > w.last, "records are produced in order");
            w.open.insert(seq);
            w.last = seq;
        }
    }

    /// Saves the watermark that the commits so far make good, for a run's
    /// end: the last batches, written side by side, each committed a
    /// watermark held back by the others.
    ///
    /// # Errors
    ///
    /// The sink's [`SinkError`]; the next run then passes over a few
    /// records more, nothing worse.
    pub async fn save_progress(&self) -> Result<(), SinkError> {
        let Some(w) = &self.watermark else {
            return Ok(());
        };
        let mark = w.lock().unwrap_or_else(|p| p.into_inner()).for_batch(&[]);
        self.sink.save_progress(mark).await
    }

    /// Records given to the sink that were in the table already (written by
    /// a run that was killed before it knew).
    pub fn passed_over(&self) -> u64 {
        self.passed_over.load(Ordering::SeqCst)
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

impl Writer {
    /// Writes `rows` on a detached task and waits for it. If this future is
    /// dropped first, a commit that happens anyway is recorded in
    /// [`late_commits`](Self::late_commits).
    ///
    /// # Errors
    ///
    /// The sink's [`SinkError`].
    pub async fn write(&self, rows: Vec<Record>) -> Result<Instant, SinkError> {
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
        let watermark = self.watermark.clone();
        let passed_over = self.passed_over.clone();
        let task = self.tracker.spawn(async move {
            // Only a tracked input pays for the bookkeeping.
            let batch = watermark.as_ref().map(|_| {
                let mut batch = shared.seqs.clone();
                batch.sort_unstable();
                batch
            });
            let mark = watermark
                .as_ref()
                .zip(batch.as_deref())
                .map(|(w, batch)| w.lock().unwrap_or_else(|p| p.into_inner()).for_batch(batch));
            let result = sink.write(rows, mark).await.map(|inserted| {
                passed_over.fetch_add((n as u64).saturating_sub(inserted), Ordering::SeqCst);
                if let Some((w, batch)) = watermark.as_ref().zip(batch.as_deref()) {
                    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                    for seq in batch {
                        w.open.remove(seq);
                    }
                }
                Instant::now()
            });
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
        // From here the caller receives the result: nothing is late.
        guard.armed = false;
        result
    }
}

impl Handler<Record> for Writer {
    /// When the batch was committed.
    type Output = Instant;
    type Error = SinkError;

    async fn handle(&self, batch: Batch<Record>) -> HandlerResult<Instant, SinkError> {
        let n = batch.len();
        match self.write(batch.items().to_vec()).await {
            Ok(at) => Ok(batch.done_all(at)),
            Err(e) if e.is_transient() => Ok((0..n).map(|_| Outcome::Retry(e.clone())).collect()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_commits_the_watermark_below_the_first_open_record_of_another_batch() {
        let mut w = Watermark {
            open: [3, 4, 5, 8, 9].into_iter().collect(),
            last: 9,
        };
        // Records 1, 2, 6 and 7 are committed; 3 is the first still open.
        assert_eq!(w.for_batch(&[8, 9]), 2);
        // This batch holds 3, 4 and 5: with it, everything to 7 is in.
        assert_eq!(w.for_batch(&[3, 4, 5]), 7);
        w.open.clear();
        assert_eq!(w.for_batch(&[]), 9, "nothing open: up to the last produced");
    }
    use crate::sink::SqliteSink;

    fn rows(seqs: std::ops::RangeInclusive<u64>) -> Vec<Record> {
        seqs.map(|seq| Record {
            seq,
            body: format!("{{\"id\":{seq}}}").into(),
        })
        .collect()
    }

    fn sqlite(name: &str) -> (SqliteSink, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("baler-writer-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.db");
        let _ = std::fs::remove_file(&path);
        (SqliteSink::open(&path, "t").unwrap(), dir)
    }

    /// Polls `fut` once.
    async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) {
        tokio::select! {
            biased;
            _ = fut => panic!("the write finished while the database was held"),
            () = tokio::task::yield_now() => {}
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_returned_is_never_late() {
        let (sink, dir) = sqlite("returned");
        let writer = Writer::new(Sink::Sqlite(sink.clone()));
        writer.write(rows(1..=5)).await.unwrap();
        assert!(writer.settle(Duration::from_secs(10)).await);
        assert!(writer.late_commits().is_empty());
        assert_eq!(sink.count().await.unwrap(), 5);
        let _ = std::fs::remove_dir_all(dir);
    }

    // Holding the database across the poll is the point: the write must wait.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_commits_after_its_caller_gave_up_is_listed_as_late() {
        let (sink, dir) = sqlite("late");
        let writer = Writer::new(Sink::Sqlite(sink.clone()));
        // Hold the database, so that the write waits for it.
        let held = sink.hold_for_test();
        let mut write = Box::pin(writer.write(rows(1..=3)));
        poll_once(&mut write).await;
        drop(write); // the engine gave up on the batch
        assert!(writer.late_commits().is_empty(), "not committed yet");
        drop(held);
        assert!(writer.settle(Duration::from_secs(10)).await);
        assert_eq!(writer.late_commits(), vec![1, 2, 3]);
        assert_eq!(sink.count().await.unwrap(), 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_committed_unseen_by_its_caller_is_listed_as_late() {
        let (sink, dir) = sqlite("early");
        let writer = Writer::new(Sink::Sqlite(sink.clone()));
        let mut write = Box::pin(writer.write(rows(7..=8)));
        poll_once(&mut write).await;
        // Let the detached write commit without polling the caller again.
        for _ in 0..500 {
            if sink.count().await.unwrap() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sink.count().await.unwrap(), 2);
        // Whether the task has recorded its result yet or not, the records
        // are in the table and the caller never heard: they are late.
        drop(write);
        assert!(writer.settle(Duration::from_secs(10)).await);
        assert_eq!(writer.late_commits(), vec![7, 8]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
