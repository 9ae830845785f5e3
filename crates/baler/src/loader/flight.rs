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
//! - The result, once set, never changes; every waiter gets a clone.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use crate::error::SubmitError;
use crate::loader::error::{FetchError, LoadError};
use crate::ticket::Ticket;

pub(crate) type LoadResult<V, E> = Result<V, LoadError<E>>;

type Submitting<K, V, E> =
    Pin<Box<dyn Future<Output = Result<Ticket<V, FetchError<E>>, SubmitError<K>>> + Send>>;

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
    pub(crate) state: Mutex<FlightState<K, V, E>>,
    pub(crate) waiters: AtomicUsize,
    /// Whether the result may be cached: false once `clear` detached the flight.
    pub(crate) cacheable: AtomicBool,
    wakers: Arc<WakerSet>,
    /// Wakes every waiter: the waker the ticket is polled with.
    broadcast: Waker,
}

impl<K, V, E> Flight<K, V, E> {
    pub(crate) fn new(key: K, stage: Stage<K, V, E>) -> Self {
        let wakers = Arc::new(WakerSet::default());
        Flight {
            key,
            state: Mutex::new(FlightState {
                stage,
                result: None,
            }),
            waiters: AtomicUsize::new(1),
            cacheable: AtomicBool::new(true),
            broadcast: Waker::from(wakers.clone()),
            wakers,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, FlightState<K, V, E>> {
        // The lock is held only around polling the ticket and storing the
        // result; a panic there leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        self.wakers.register(slot, waker);
    }

    pub(crate) fn deregister(&self, slot: &mut Option<usize>) {
        self.wakers.deregister(slot);
    }

    pub(crate) fn wake_all(&self) {
        self.wakers.wake_all();
    }

    /// Drives the fetch one step with the broadcast waker. Returns the result
    /// once it is there; stores it for the other waiters.
    pub(crate) fn poll_fetch(&self, state: &mut FlightState<K, V, E>) -> Poll<LoadResult<V, E>> {
        let mut cx = Context::from_waker(&self.broadcast);
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

/// The wakers of a flight's waiting callers, in slots that callers keep.
#[derive(Default)]
struct WakerSet {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl WakerSet {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.lock();
        match *slot {
            Some(i) => match &mut slots.wakers[i] {
                Some(w) if w.will_wake(waker) => {}
                w => *w = Some(waker.clone()),
            },
            None => {
                let i = match slots.free.pop() {
                    Some(i) => {
                        slots.wakers[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        slots.wakers.push(Some(waker.clone()));
                        slots.wakers.len() - 1
                    }
                };
                *slot = Some(i);
            }
        }
    }

    fn deregister(&self, slot: &mut Option<usize>) {
        if let Some(i) = slot.take() {
            let mut slots = self.lock();
            slots.wakers[i] = None;
            slots.free.push(i);
        }
    }
}

impl Wake for WakerSet {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

impl WakerSet {
    /// Wakes every registered waiter. Each re-registers when it is polled.
    fn wake_all(&self) {
        let woken: Vec<Waker> = {
            let mut slots = self.lock();
            slots.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for waker in woken {
            waker.wake();
        }
    }
}
