//! Helpers shared by the specification tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use baler::{Batch, Batcher, Handler, HandlerResult, Outcome, Stats};
use tokio::time::Instant;

/// One batch as the handler saw it.
#[derive(Debug, Clone)]
pub struct Seen<T, K> {
    pub key: Option<K>,
    pub items: Vec<T>,
    pub attempts: Vec<u32>,
    pub cost: u64,
    pub at: Instant,
}

/// A handler that records every batch and answers each item with `answer`,
/// after sleeping `delay` (on the paused clock).
pub struct Recorder<T, K> {
    pub seen: Arc<Mutex<Vec<Seen<T, K>>>>,
    pub delay: Duration,
    pub answer: fn(&T) -> Outcome<T, String>,
}

pub type Log<T, K> = Arc<Mutex<Vec<Seen<T, K>>>>;

pub fn echo<T: Clone>(t: &T) -> Outcome<T, String> {
    Outcome::Done(t.clone())
}

impl<T, K> Recorder<T, K> {
    pub fn new(delay: Duration) -> (Self, Log<T, K>)
    where
        T: Clone,
    {
        Self::answering(delay, echo::<T>)
    }

    pub fn answering(delay: Duration, answer: fn(&T) -> Outcome<T, String>) -> (Self, Log<T, K>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Recorder {
                seen: seen.clone(),
                delay,
                answer,
            },
            seen,
        )
    }
}

impl<T, K> Handler<T, K> for Recorder<T, K>
where
    T: Clone + Send + Sync + 'static,
    K: Clone + Send + Sync + 'static,
{
    type Output = T;
    type Error = String;

    async fn handle(&self, batch: Batch<T, K>) -> HandlerResult<T, String> {
        self.seen.lock().unwrap().push(Seen {
            key: batch.key().cloned(),
            items: batch.items().to_vec(),
            attempts: batch.info().iter().map(|i| i.attempt).collect(),
            cost: batch.cost(),
            at: Instant::now(),
        });
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(batch.iter().map(self.answer).collect())
    }
}

/// The sizes of the batches seen so far.
pub fn sizes<T, K>(log: &Log<T, K>) -> Vec<usize> {
    log.lock().unwrap().iter().map(|s| s.items.len()).collect()
}

/// Lets the engine and batch tasks run without moving the paused clock: the
/// one settling step of every test, so that "settled" means the same thing
/// everywhere.
///
/// Each `yield_now` puts this task behind every task already woken, so each
/// one lets at least one more hand-off happen. The longest chain a test waits
/// for without moving the clock has four: the engine's turn that forms a
/// batch, the batch task, the engine's turn that resolves its tickets, and
/// the caller or listener they wake. Eight yields cover that chain twice
/// over, for handlers that yield once themselves. Measured: the suite (the
/// model test included) passes with two yields and fails with one; many more
/// only slow the model test down, which settles after every step.
pub async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock by `d`, then lets everything that became due run.
pub async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    settle().await;
}

/// The target invariant: the target is exactly the cost of what is held.
pub fn assert_target<T, O, E, K>(b: &Batcher<T, O, E, K>) -> Stats {
    let s = b.stats();
    assert_eq!(
        s.target,
        s.buffered_cost + s.retrying_cost + s.in_flight_cost,
        "target must equal the cost of what is buffered, retrying and in flight: {s:?}"
    );
    s
}

/// Polls a future once; `Some` if it is ready.
pub fn now_or_never<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
