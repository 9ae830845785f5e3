//! One operation of a processor: the caller's closure, and the flag that
//! decides, exactly once, whether it runs or is cancelled.
//!
//! The engine hands batches to the handler as a shared slice, so the closure
//! sits behind a mutex from which the handler takes it out. Who wins between a
//! caller giving up and the handler starting the operation is decided by one
//! compare-and-swap on `state`: `PENDING → RUNNING` (the handler) or
//! `PENDING → CANCELLED` (the caller). The loser sees the other's state, so an
//! operation never runs for a caller that was told `Cancelled`.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;

/// An operation's result, with its type erased until `run` takes it back.
pub(crate) type Value = Box<dyn Any + Send>;

type Call<R> = Box<dyn FnOnce(&mut R) -> Value + Send>;

/// The payload the processor submits to its engine.
pub(crate) struct Job<R> {
    state: Arc<AtomicU8>,
    call: Mutex<Option<Call<R>>>,
}

/// The caller's side of a job: it cancels the job unless it already started.
pub(crate) struct Claim {
    state: Arc<AtomicU8>,
}

impl<R> Job<R> {
    pub(crate) fn new<V, F>(op: F) -> (Job<R>, Claim)
    where
        F: FnOnce(&mut R) -> V + Send + 'static,
        V: Send + 'static,
    {
        let state = Arc::new(AtomicU8::new(PENDING));
        let call: Call<R> = Box::new(move |resource: &mut R| Box::new(op(resource)) as Value);
        let job = Job {
            state: state.clone(),
            call: Mutex::new(Some(call)),
        };
        (job, Claim { state })
    }

    /// Whether the caller gave up before the job started.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// Takes the closure to run it, unless the caller gave up first.
    pub(crate) fn start(&self) -> Option<Call<R>> {
        self.state
            .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // The lock is only ever held to take the closure out, never while it
        // runs, so a poisoned lock still holds a consistent Option.
        self.call
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }
}

impl Claim {
    /// Cancels the job if it has not started; returns whether it was cancelled.
    pub(crate) fn cancel(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.state.load(Ordering::Acquire) == CANCELLED
    }
}

impl Drop for Claim {
    /// A caller that stops waiting (its `run` future is dropped) cancels its
    /// operation, so that it does not run for nobody.
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_job_does_not_start() {
        let (job, claim) = Job::<u32>::new(|n| *n += 1);
        assert!(claim.cancel());
        assert!(job.is_cancelled());
        assert!(job.start().is_none());
    }

    #[test]
    fn a_started_job_cannot_be_cancelled() {
        let (job, claim) = Job::<u32>::new(|n| *n += 1);
        let call = job.start().expect("the job was pending");
        assert!(!claim.cancel());
        let mut n = 1;
        call(&mut n);
        assert_eq!(n, 2);
    }

    #[test]
    fn dropping_the_claim_cancels_a_pending_job() {
        let (job, claim) = Job::<u32>::new(|n| *n += 1);
        drop(claim);
        assert!(job.start().is_none());
    }
}
