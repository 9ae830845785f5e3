//! A flight: one fetch of one key, shared by every caller waiting for it.
//!
//! # The model
//!
//! The first caller to load a key that is neither cached nor in flight
//! creates a flight and queues the key on the engine; its ticket goes into
//! the flight. Later callers of the same key join the flight instead of
//! queuing it again. There is no task per flight: whichever waiting caller is
//! polled polls the ticket, with a waker that wakes *every* waiting caller,
//! so the fetch moves on whichever callers remain.
//!
//! # Invariants
//!
//! - `waiters` counts the callers that joined and have neither received the
//!   result nor given up. It only changes under the loader's table lock, so a
//!   caller cannot join a flight that its last waiter is just leaving.
//! - The ticket is dropped (which takes the key out of the engine's buffer if
//!   its batch has not gone yet) only when `waiters` reaches zero or the
//!   result has arrived: one caller giving up never cancels the fetch for
//!   the others.
//! - The waiter that polls the result out of the ticket takes the flight
//!   out of the table under the flight's lock, so no caller can join after
//!   that; it stores a clone for the others only if another waiter is
//!   counted, and wakes them. The result, once stored, never changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use crate::error::SubmitError;
use crate::loader::error::{FetchError, LoadError};
use crate::loader::hashed::Hashed;
use crate::ticket::Ticket;

pub(crate) type LoadResult<V, E> = Result<V, LoadError<E>>;

type Submitting<K, V, E> =
    Pin<Box<dyn Future<Output = Result<Ticket<V, FetchError<E>>, SubmitError<Hashed<K>>>> + Send>>;

/// How far the fetch has come.
pub(crate) enum Stage<K, V, E> {
    /// Waiting for room in the engine's buffer (it was full).
    Submitting(Submitting<K, V, E>),
    /// Queued on the engine.
    Queued(Ticket<V, FetchError<E>>),
    /// The result arrived, or every waiter left.
    Over,
}

pub(crate) struct FlightState<K, V, E> {
    pub(crate) stage: Stage<K, V, E>,
    pub(crate) result: Option<LoadResult<V, E>>,
}

pub(crate) struct Flight<K, V, E> {
    pub(crate) key: K,
    /// The key's hash, under which the loader's table files the flight.
    pub(crate) hash: u64,
    pub(crate) state: Mutex<FlightState<K, V, E>>,
    pub(crate) waiters: AtomicUsize,
    /// Whether the result may be cached: false once `clear` detached the flight.
    pub(crate) cacheable: AtomicBool,
    /// The waiters' wakers. The flight itself is the waker the fetch is
    /// polled with: waking it wakes every waiter.
    wakers: Mutex<Slots>,
}

impl<K, V, E> Flight<K, V, E> {
    pub(crate) fn new(key: K, hash: u64, stage: Stage<K, V, E>) -> Self {
        Flight {
            key,
            hash,
            state: Mutex::new(FlightState {
                stage,
                result: None,
            }),
            waiters: AtomicUsize::new(1),
            cacheable: AtomicBool::new(true),
            wakers: Mutex::new(Slots::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, FlightState<K, V, E>> {
        // The lock is held only around polling the ticket and storing the
        // result; a panic there leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_wakers(&self) -> MutexGuard<'_, Slots> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or refreshes) a waiter's waker in its slot.
    pub(crate) fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        self.lock_wakers().register(slot, waker);
    }

    /// Forgets a waiter's waker.
    pub(crate) fn deregister(&self, slot: &mut Option<usize>) {
        if let Some(i) = slot.take() {
            self.lock_wakers().release(i);
        }
    }

    /// Wakes every registered waiter (outside the lock: a waker may run
    /// code). Each re-registers when it is polled.
    pub(crate) fn wake_all(&self) {
        let (first, rest) = self.lock_wakers().take_all();
        if let Some(waker) = first {
            waker.wake();
        }
        for waker in rest {
            waker.wake();
        }
    }
}

impl<K, V, E> Flight<K, V, E>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Drives the fetch one step, with a waker that wakes every waiter.
    pub(crate) fn poll_fetch(
        self: &Arc<Self>,
        state: &mut FlightState<K, V, E>,
    ) -> Poll<LoadResult<V, E>> {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            let result = match &mut state.stage {
                Stage::Submitting(submit) => match submit.as_mut().poll(&mut cx) {
                    Poll::Ready(Ok(ticket)) => {
                        state.stage = Stage::Queued(ticket);
                        continue;
                    }
                    Poll::Ready(Err(_)) => Err(LoadError::Stopped),
                    Poll::Pending => return Poll::Pending,
                },
                Stage::Queued(ticket) => match Pin::new(ticket).poll(&mut cx) {
                    Poll::Ready(result) => result.map_err(LoadError::from_engine),
                    Poll::Pending => return Poll::Pending,
                },
                // Only reachable for a flight whose waiters all left, which
                // nobody polls; answer rather than hang.
                Stage::Over => Err(LoadError::Stopped),
            };
            state.stage = Stage::Over;
            return Poll::Ready(result);
        }
    }
}

impl<K, V, E> Wake for Flight<K, V, E>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// The wakers of a flight's waiting callers, in slots that callers keep.
/// Slot 0 is inline: a flight with one waiter allocates nothing for it.
#[derive(Default)]
struct Slots {
    first: Option<Waker>,
    first_taken: bool,
    rest: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Slots {
    fn get(&mut self, i: usize) -> &mut Option<Waker> {
        match i {
            0 => &mut self.first,
            i => &mut self.rest[i - 1],
        }
    }

    fn register(&mut self, slot: &mut Option<usize>, waker: &Waker) {
        let i = match *slot {
            Some(i) => i,
            None => {
                let i = if !self.first_taken {
                    self.first_taken = true;
                    0
                } else if let Some(i) = self.free.pop() {
                    i
                } else {
                    self.rest.push(None);
                    self.rest.len()
                };
                *slot = Some(i);
                i
            }
        };
        match self.get(i) {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
    }

    fn release(&mut self, i: usize) {
        *self.get(i) = None;
        if i == 0 {
            self.first_taken = false;
        } else {
            self.free.push(i);
        }
    }

    /// Takes every waker out, keeping the slots. Allocates only for a
    /// flight that has had more than one waiter.
    fn take_all(&mut self) -> (Option<Waker>, Vec<Waker>) {
        let rest = if self.rest.is_empty() {
            Vec::new()
        } else {
            self.rest.iter_mut().filter_map(Option::take).collect()
        };
        (self.first.take(), rest)
    }
}
