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
//!
//! The loom tests at the end of this file (run with `RUSTFLAGS="--cfg
//! baler_loom"`) check that a push is never missed by an engine going to
//! sleep, and that a push racing the close is either handed over or refused.

use std::task::{Context, Poll, Waker};

#[cfg(baler_loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(baler_loom))]
use std::sync::{Mutex, MutexGuard};

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

#[cfg(all(test, baler_loom))]
mod loom_tests {
    //! The races between submitters, the engine and its stop, explored
    //! exhaustively by loom. Run with
    //! `RUSTFLAGS="--cfg baler_loom" cargo test -p baler --lib --release loom`.

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two submitters push while the engine takes and goes to sleep: the
    /// engine is always woken for what it has not taken yet (loom reports a
    /// deadlock if a push is missed), and gets every message once.
    #[test]
    fn a_push_is_never_missed_by_an_engine_going_to_sleep() {
        loom::model(|| {
            let intake = Arc::new(Intake::<u32>::new());
            let pushers: Vec<_> = (0..2)
                .map(|i| {
                    let intake = intake.clone();
                    thread::spawn(move || intake.push(i).is_ok())
                })
                .collect();
            let mut got = Vec::new();
            loom::future::block_on(async {
                while got.len() < 2 {
                    let mut taken = Vec::new();
                    std::future::poll_fn(|cx| intake.poll_take(cx, &mut taken)).await;
                    assert!(!taken.is_empty(), "woken with nothing to take");
                    got.extend(taken);
                }
            });
            for p in pushers {
                assert!(p.join().unwrap(), "the intake is open");
            }
            got.sort_unstable();
            assert_eq!(got, vec![0, 1]);
        });
    }

    /// A push racing the engine's stop is either handed over (in what
    /// `close` returns, so that its ticket is resolved) or refused (given
    /// back to the submitter); never both, never neither.
    #[test]
    fn a_push_racing_the_close_is_handed_over_or_refused() {
        loom::model(|| {
            let intake = Arc::new(Intake::<u32>::new());
            let pusher = {
                let intake = intake.clone();
                thread::spawn(move || intake.push(7))
            };
            let left = intake.close();
            match pusher.join().unwrap() {
                Ok(()) => assert_eq!(left, vec![7]),
                Err(refused) => {
                    assert_eq!(refused, 7);
                    assert!(left.is_empty());
                }
            }
            assert_eq!(intake.push(8), Err(8), "a push after the close is refused");
        });
    }
}
