//! The intake: how accepted operations reach the engine.
//!
//! Submits are the one message every operation sends, so they skip the
//! engine's general channel: a submitter pushes its operation onto a vector
//! under a short lock, and the engine takes the whole vector at once,
//! swapping in an empty one of the same capacity. Only the first push after
//! the engine went to sleep wakes it. Per operation that is one uncontended
//! lock and a push, where a channel pays several atomic updates (the slot,
//! its ready bit, the message count, the receiver's waker).
//!
//! Commands and batch reports still go through the channel. So that a
//! command never overtakes a submit that happened before it (a flush must
//! wait for every operation accepted before it was called; a cancel must find
//! its operation buffered), the engine takes the intake before it handles a
//! command.
//!
//! When the engine stops, or its task is dropped with the runtime, it closes
//! the intake: what is still in it is dropped (its tickets resolve with
//! [`Error::Stopped`](crate::Error::Stopped)) and later pushes are refused.

use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::engine::Res;
use crate::slot::Resolver;

/// An accepted operation on its way to the engine.
pub(crate) struct Submitted<T, K, O, E> {
    pub(crate) payload: T,
    pub(crate) key: Option<K>,
    pub(crate) cost: u32,
    pub(crate) resolver: Resolver<Res<O, E>>,
}

pub(crate) struct Intake<M> {
    state: Mutex<State<M>>,
}

struct State<M> {
    queue: Vec<M>,
    /// The engine's waker, while it waits for work.
    waker: Option<Waker>,
    closed: bool,
}

impl<M> Intake<M> {
    pub(crate) fn new() -> Self {
        Intake {
            state: Mutex::new(State {
                queue: Vec::new(),
                waker: None,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // Nothing panics while the lock is held (a push that cannot grow
        // the vector aborts), so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a message to the engine; gives it back if the engine is gone.
    #[inline]
    pub(crate) fn push(&self, msg: M) -> Result<(), M> {
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return Err(msg);
            }
            state.queue.push(msg);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Moves everything pushed so far into `into`, which must be empty; or,
    /// if nothing was, registers the engine's waker.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<M>) -> Poll<()> {
        let mut state = self.lock();
        if state.queue.is_empty() {
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut state.queue, into);
        Poll::Ready(())
    }

    /// Moves everything pushed so far into `into`, which must be empty.
    pub(crate) fn take(&self, into: &mut Vec<M>) {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            std::mem::swap(&mut state.queue, into);
        }
    }

    /// Refuses later pushes and returns what is left.
    pub(crate) fn close(&self) -> Vec<M> {
        let mut state = self.lock();
        state.closed = true;
        state.waker = None;
        std::mem::take(&mut state.queue)
    }
}
