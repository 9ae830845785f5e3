//! One batch of a processor: load, apply in order, save, answer.
//!
//! This is the engine's [`Handler`] for a processor. The engine guarantees
//! that a batch holds the operations of one key in arrival order and that two
//! batches of a key never overlap (`max_in_flight_per_key(1)`); this file only
//! has to run them.
//!
//! # A panicking operation
//!
//! Each operation runs under `catch_unwind`. If one panics, the resource may
//! be half changed (the operation stopped midway), so it is **thrown away
//! unsaved**: the panicking operation fails with `Panicked`, and every other
//! operation of the batch with `Aborted` (those before it ran on a resource
//! that is now discarded; those after it never run). None of the batch was
//! persisted, so all of it is safe to run again. The processor carries on
//! with the next batch, which loads the resource afresh.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::Failure;
use super::job::{Job, Value};
use super::report::{BatchOutcome, BatchReport, Figures};
use super::store::Store;
use crate::handler::{Batch, Handler, HandlerResult, Outcome};
use crate::run::panic_message;

pub(crate) struct BatchHandler<S, K> {
    pub(crate) store: S,
    pub(crate) max_store_time: Duration,
    pub(crate) figures: Arc<Figures<K>>,
    pub(crate) _key: PhantomData<fn(K)>,
}

/// What became of one operation of the batch.
enum Ran {
    Value(Value),
    Cancelled,
    NotRun,
}

impl<S, K> Handler<Job<S::Resource>, K> for BatchHandler<S, K>
where
    S: Store<K>,
    K: Clone + Send + Sync + 'static,
{
    type Output = Value;
    type Error = Failure<S::Error>;

    async fn handle(
        &self,
        batch: Batch<Job<S::Resource>, K>,
    ) -> HandlerResult<Value, Failure<S::Error>> {
        // The processor always submits with a key. Without one, no outcome
        // is returned and the engine fails the batch with a count mismatch.
        let Some(key) = batch.key() else {
            return Ok(Vec::new());
        };
        let mut report = BatchReport {
            key: key.clone(),
            operations: batch.len(),
            applied: 0,
            cancelled: 0,
            load_time: Duration::ZERO,
            save_time: None,
            outcome: BatchOutcome::Skipped,
        };
        // Nobody waits for any of these: spare the store a load and a save.
        if batch.iter().all(Job::is_cancelled) {
            report.cancelled = batch.len();
            self.figures.record(report);
            return Ok(cancelled_all(batch.len()));
        }

        let started = Instant::now();
        let loaded = tokio::time::timeout(self.max_store_time, self.store.load(key)).await;
        report.load_time = started.elapsed();
        let mut resource = match loaded {
            Ok(Ok(resource)) => resource,
            Ok(Err(e)) => {
                report.outcome = BatchOutcome::LoadFailed;
                self.figures.record(report);
                return Err(Failure::Load(Arc::new(e)));
            }
            Err(_) => {
                report.outcome = BatchOutcome::LoadTimedOut;
                self.figures.record(report);
                return Err(Failure::LoadTimedOut(self.max_store_time));
            }
        };

        let mut ran: Vec<Ran> = Vec::with_capacity(batch.len());
        let mut panicked: Option<(usize, String)> = None;
        for (i, job) in batch.iter().enumerate() {
            if panicked.is_some() {
                ran.push(Ran::NotRun);
                continue;
            }
            let Some(call) = job.start() else {
                report.cancelled += 1;
                ran.push(Ran::Cancelled);
                continue;
            };
            report.applied += 1;
            // The resource is thrown away if this panics, so no one sees it
            // in a broken state: asserting unwind safety is sound.
            match catch_unwind(AssertUnwindSafe(|| call(&mut resource))) {
                Ok(value) => ran.push(Ran::Value(value)),
                Err(panic) => {
                    panicked = Some((i, panic_message(panic.as_ref())));
                    ran.push(Ran::NotRun);
                }
            }
        }

        if let Some((at, message)) = panicked {
            drop(resource);
            report.outcome = BatchOutcome::Panicked;
            self.figures.record(report);
            let outcomes = ran
                .into_iter()
                .enumerate()
                .map(|(i, ran)| match ran {
                    Ran::Cancelled => Outcome::Failed(Failure::Cancelled),
                    _ if i == at => Outcome::Failed(Failure::Panicked(message.clone())),
                    _ => Outcome::Failed(Failure::Aborted(message.clone())),
                })
                .collect();
            return Ok(outcomes);
        }
        if report.applied == 0 {
            // Everyone gave up while the resource loaded: nothing changed.
            self.figures.record(report);
            return Ok(cancelled_all(ran.len()));
        }

        let started = Instant::now();
        let saved = tokio::time::timeout(self.max_store_time, self.store.save(key, resource)).await;
        report.save_time = Some(started.elapsed());
        match saved {
            Ok(Ok(())) => {
                report.outcome = BatchOutcome::Saved;
                self.figures.record(report);
                Ok(ran
                    .into_iter()
                    .map(|ran| match ran {
                        Ran::Value(value) => Outcome::Done(value),
                        Ran::Cancelled | Ran::NotRun => Outcome::Failed(Failure::Cancelled),
                    })
                    .collect())
            }
            Ok(Err(e)) => {
                report.outcome = BatchOutcome::SaveFailed;
                self.figures.record(report);
                Err(Failure::Save(Arc::new(e)))
            }
            Err(_) => {
                report.outcome = BatchOutcome::SaveTimedOut;
                self.figures.record(report);
                Err(Failure::SaveTimedOut(self.max_store_time))
            }
        }
    }
}

fn cancelled_all<O, E>(n: usize) -> Vec<Outcome<O, Failure<E>>> {
    (0..n)
        .map(|_| Outcome::Failed(Failure::Cancelled))
        .collect()
}
