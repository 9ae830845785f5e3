//! The result slot: the hand-off between one operation's resolver (held by the
//! engine, then by the task that runs its batch) and its [`Ticket`](crate::Ticket).
//!
//! It is a one-shot channel with one extra question the engine must be able to
//! ask: *has the caller given up?* The engine asks it when it forms a batch, and
//! only operations whose ticket is still alive are dispatched.
//!
//! # The hand-off
//!
//! Exactly one of these happens to every slot, decided under its lock:
//!
//! - the resolver stores a value, and the ticket takes it (or drops it unseen);
//! - the ticket closes the slot first, and the resolver's `send` fails: the
//!   engine then treats the operation as cancelled if it has not dispatched it;
//! - the resolver is dropped without sending (the runtime itself is shutting
//!   down), and the ticket resolves with [`Error::Stopped`](crate::Error::Stopped).
//!
//! [`Receiver::close`] tells the ticket which of the first two won, so a ticket
//! only asks the engine to sweep its buffer when the operation was really left
//! unresolved. A plain mutex keeps the state machine obvious; it is taken twice
//! per operation and never contended for longer than a few instructions. The
//! loom tests at the end of this file (run with `RUSTFLAGS="--cfg baler_loom"`) check the races between the three sides.

use std::task::{Context, Poll, Waker};

#[cfg(baler_loom)]
use loom::sync::{Arc, Mutex};
#[cfg(not(baler_loom))]
use std::sync::{Arc, Mutex};

enum State<R> {
    /// No value yet; the ticket may have left a waker.
    Waiting(Option<Waker>),
    /// The resolver stored a value the ticket has not taken yet.
    Ready(R),
    /// The ticket took the value.
    Taken,
    /// The ticket was dropped before a value arrived.
    Closed,
    /// The resolver was dropped without sending.
    Abandoned,
}

struct Inner<R> {
    state: Mutex<State<R>>,
}

impl<R> Inner<R> {
    fn lock(&self) -> impl std::ops::DerefMut<Target = State<R>> + '_ {
        // The lock is never held across user code, so poisoning can only come
        // from a panic inside `Waker::wake`; the state is still consistent then.
        #[cfg(not(baler_loom))]
        {
            self.state
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
        }
        #[cfg(baler_loom)]
        {
            self.state.lock().unwrap()
        }
    }
}

/// Creates a connected resolver and receiver.
pub(crate) fn channel<R>() -> (Resolver<R>, Receiver<R>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::Waiting(None)),
    });
    (
        Resolver {
            inner: Some(inner.clone()),
        },
        Receiver { inner },
    )
}

/// The sending half: resolves the operation exactly once.
pub(crate) struct Resolver<R> {
    inner: Option<Arc<Inner<R>>>,
}

impl<R> Resolver<R> {
    /// Stores the value. Returns it back if the ticket was already dropped.
    pub(crate) fn send(mut self, value: R) -> Result<(), R> {
        let Some(inner) = self.inner.take() else {
            return Err(value);
        };
        let waker = {
            let mut state = inner.lock();
            match std::mem::replace(&mut *state, State::Taken) {
                State::Waiting(waker) => {
                    *state = State::Ready(value);
                    waker
                }
                other => {
                    *state = other;
                    return Err(value);
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the ticket has been dropped: the caller no longer wants a result.
    pub(crate) fn is_closed(&self) -> bool {
        match &self.inner {
            Some(inner) => matches!(*inner.lock(), State::Closed),
            None => true,
        }
    }
}

impl<R> Drop for Resolver<R> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let waker = {
            let mut state = inner.lock();
            match std::mem::replace(&mut *state, State::Abandoned) {
                State::Waiting(waker) => waker,
                other => {
                    *state = other;
                    None
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// What a receiver saw when it was closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CloseOutcome {
    /// No value had arrived: the operation was left unresolved and may still
    /// be buffered, so the engine should be told.
    Unresolved,
    /// A value had arrived (or the resolver is gone): nothing to clean up.
    Settled,
}

/// Why a receive produced no value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResolverDropped;

/// The receiving half, owned by a ticket.
pub(crate) struct Receiver<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Receiver<R> {
    /// Polls for the value.
    ///
    /// # Panics
    ///
    /// If called again after it returned `Ready(Ok(_))`: a future must not
    /// be polled after it completed.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, ResolverDropped>> {
        let mut state = self.inner.lock();
        match std::mem::replace(&mut *state, State::Taken) {
            State::Ready(value) => Poll::Ready(Ok(value)),
            State::Waiting(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = State::Waiting(Some(waker));
                Poll::Pending
            }
            State::Abandoned => {
                *state = State::Abandoned;
                Poll::Ready(Err(ResolverDropped))
            }
            State::Taken | State::Closed => {
                drop(state);
                panic!("a baler ticket was polled after it had resolved")
            }
        }
    }

    /// Closes the slot: a later `send` fails and `is_closed` turns true.
    pub(crate) fn close(&mut self) -> CloseOutcome {
        let mut state = self.inner.lock();
        match std::mem::replace(&mut *state, State::Closed) {
            State::Waiting(_) => CloseOutcome::Unresolved,
            other => {
                // A value that nobody will read is dropped here, outside the
                // resolver's critical section.
                *state = State::Closed;
                drop(state);
                drop(other);
                CloseOutcome::Settled
            }
        }
    }
}

#[cfg(all(test, baler_loom))]
mod loom_tests {
    //! The races of the ticket/cancel hand-off, explored exhaustively by loom.
    //! Run with `RUSTFLAGS="--cfg baler_loom" cargo test -p baler --lib --release loom`.

    use super::*;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::thread;

    /// A ticket dropped while its operation is resolved: the value is either
    /// delivered (the ticket saw it: `Settled`) or refused (the ticket saw
    /// nothing: `Unresolved`, and the engine is told), never both or neither.
    #[test]
    fn close_and_send_agree_on_who_won() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let sender = thread::spawn(move || tx.send(7).is_ok());
            let closed = rx.close();
            let delivered = sender.join().unwrap();
            assert_eq!(delivered, closed == CloseOutcome::Settled);
        });
    }

    /// The engine's side: at dispatch it skips operations whose ticket is
    /// closed; otherwise the batch resolves them. A ticket dropped
    /// concurrently is accounted for exactly once: cancelled before dispatch,
    /// or resolved (its value discarded), and a ticket that reported
    /// `Unresolved` is always found closed by the sweep that follows.
    #[test]
    fn a_dropped_ticket_is_cancelled_or_resolved_exactly_once() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let cancelled = Arc::new(AtomicBool::new(false));
            let resolved = Arc::new(AtomicBool::new(false));
            let (c, r) = (cancelled.clone(), resolved.clone());
            let engine = thread::spawn(move || {
                if tx.is_closed() {
                    c.store(true, Ordering::SeqCst);
                    drop(tx);
                    None
                } else {
                    r.store(true, Ordering::SeqCst);
                    Some(tx.send(1).is_ok())
                }
            });
            let outcome = rx.close();
            let dispatched = engine.join().unwrap();
            let cancelled = cancelled.load(Ordering::SeqCst);
            let resolved = resolved.load(Ordering::SeqCst);
            assert!(cancelled ^ resolved, "accounted exactly once");
            match outcome {
                // The ticket left before any value: either the engine saw it
                // closed, or its send was refused.
                CloseOutcome::Unresolved => assert!(cancelled || dispatched == Some(false)),
                // A value arrived first, so the engine dispatched it.
                CloseOutcome::Settled => assert_eq!(dispatched, Some(true)),
            }
        });
    }

    /// A ticket waiting for its value is woken by the send, or by the
    /// resolver being dropped: it never hangs.
    #[test]
    fn a_waiting_ticket_is_always_woken() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let sender = thread::spawn(move || {
                let _ = tx.send(3);
            });
            let got = loom::future::block_on(std::future::poll_fn(|cx| rx.poll_recv(cx)));
            assert_eq!(got, Ok(3));
            sender.join().unwrap();
        });
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let dropper = thread::spawn(move || drop(tx));
            let got = loom::future::block_on(std::future::poll_fn(|cx| rx.poll_recv(cx)));
            assert_eq!(got, Err(ResolverDropped));
            dropper.join().unwrap();
        });
    }
}
