//! The waiting-submitter workload: what one submitter costs while
//! backpressure holds it, baler's `submit` against a tokio `mpsc` send.
//!
//! Both get a bound of [`DEFAULT_BUFFER`] that is filled first and never
//! drains (baler's handler never returns; the channel's receiver never
//! reads), then `n` tasks each wait in `submit(op).await` or
//! `send(op).await`. The counting allocator sees the tasks' memory and
//! whatever waiting allocates on either side. To leave only the waiter's own
//! cost, the same count of bare tasks is measured on a fresh runtime: each
//! runs a [`Bare`] future with the size, alignment and output of the waiter's
//! future that is never ready, so its task is the waiter's task, byte for
//! byte, minus everything the waiter does.

use std::future::Future;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use baler::{handler_fn, Batch, Batcher, SubmitError};
use tokio::sync::mpsc;

use crate::alloc;
use crate::shared::DEFAULT_BUFFER;
use crate::workloads::runtime;

/// Tasks that have started (waiters: before their first `await`; bare tasks:
/// in their first poll).
static STARTED: AtomicUsize = AtomicUsize::new(0);
/// Waiters whose `submit` or `send` returned: the bound had room after all.
static GOT_ROOM: AtomicUsize = AtomicUsize::new(0);

/// How long the tasks may take to start before the measurement gives up.
const START_LIMIT: Duration = Duration::from_secs(120);
/// Time for the workers and the batcher to finish what the last start set
/// off, before the count is read.
pub const SETTLE: Duration = Duration::from_millis(200);

/// One measurement of `n` waiting submitters.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    /// Bytes per waiting submitter beyond its task: the spawned future's
    /// state plus what waiting allocates (on the submitter's side and the
    /// receiver's).
    pub bytes_per_waiter: f64,
    /// Of which the spawned future's state (`size_of` the `async` block
    /// holding the handle and the `submit` or `send` future).
    pub future_bytes: usize,
    /// Of which the `submit(op)` or `send(op)` future alone.
    pub call_bytes: usize,
    /// What a bare task with the same future cost, per task, beyond that
    /// future: tokio's task header, scheduler handle, trailer and padding.
    pub task_bytes: f64,
}

/// One of the two rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// baler's `Batcher::submit`.
    Baler,
    /// tokio's bounded `mpsc::Sender::send`.
    TokioMpsc,
}

impl Waiter {
    /// Both rows, baler first.
    pub const ALL: [Waiter; 2] = [Waiter::Baler, Waiter::TokioMpsc];

    /// The name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Waiter::Baler => "baler",
            Waiter::TokioMpsc => "tokio mpsc",
        }
    }

    /// What waits, one line for the document.
    pub fn config(self) -> &'static str {
        match self {
            Waiter::Baler => {
                "`Batcher::builder().buffer_size(10_000)`, a handler that never returns; each task: `batcher.submit(op).await`"
            }
            Waiter::TokioMpsc => {
                "`mpsc::channel::<u64>(10_000)`, a receiver that never reads; each task: `tx.send(op).await`"
            }
        }
    }

    /// `n` submitters waiting for room: see the module's documentation.
    pub fn measure(self, n: usize) -> Result<Waiting, String> {
        match self {
            Waiter::Baler => measure(
                n,
                baler_full,
                |(b, _tickets): &Filled, x| {
                    let b = b.clone();
                    async move {
                        STARTED.fetch_add(1, Ordering::Relaxed);
                        // The ticket, if one comes, is dropped: the row only
                        // counts submitters that wait.
                        let _ = b.submit(x).await;
                        GOT_ROOM.fetch_add(1, Ordering::Relaxed);
                    }
                },
                |(b, _tickets): &Filled| std::mem::size_of_val(&b.submit(0)),
            ),
            Waiter::TokioMpsc => measure(
                n,
                mpsc_full,
                |(tx, _rx): &Channel, x| {
                    let tx = tx.clone();
                    async move {
                        STARTED.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(x).await;
                        GOT_ROOM.fetch_add(1, Ordering::Relaxed);
                    }
                },
                |(tx, _rx): &Channel| std::mem::size_of_val(&tx.send(0)),
            ),
        }
    }
}

type Handle = Batcher<u64, (), std::convert::Infallible>;
/// The filled batcher and the tickets of what fills it.
type Filled = (Handle, Vec<baler::Ticket<(), std::convert::Infallible>>);
type Channel = (mpsc::Sender<u64>, mpsc::Receiver<u64>);

/// A baler batcher whose buffer is full and stays full: its handler never
/// returns, so nothing it holds ever completes.
async fn baler_full() -> Result<Filled, String> {
    let batcher = Batcher::builder()
        .buffer_size(DEFAULT_BUFFER)
        .build(handler_fn(|batch: Batch<u64>| async move {
            std::future::pending::<()>().await;
            Ok::<_, std::convert::Infallible>(batch.done_all(()))
        }))
        .map_err(|e| format!("cannot build the batcher: {e}"))?;
    let mut tickets = Vec::with_capacity(DEFAULT_BUFFER);
    // Fill until full, then check after a pause that it stays full: the
    // buffer is only full for good once the engine has taken what it will.
    for _ in 0..50 {
        loop {
            match batcher.try_submit(tickets.len() as u64) {
                Ok(ticket) => tickets.push(ticket),
                Err(SubmitError::Full(_)) => break,
                Err(e) => return Err(format!("filling the buffer: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        match batcher.try_submit(u64::MAX) {
            Ok(ticket) => tickets.push(ticket),
            Err(SubmitError::Full(_)) => return Ok((batcher, tickets)),
            Err(e) => return Err(format!("filling the buffer: {e}")),
        }
    }
    Err(format!(
        "the buffer of {DEFAULT_BUFFER} kept taking operations ({} so far) while the handler was held",
        tickets.len()
    ))
}

/// A channel with all its room taken and a receiver that never reads.
async fn mpsc_full() -> Result<Channel, String> {
    let (tx, rx) = mpsc::channel::<u64>(DEFAULT_BUFFER);
    for x in 0..DEFAULT_BUFFER as u64 {
        tx.try_send(x)
            .map_err(|e| format!("filling the channel: {e}"))?;
    }
    match tx.try_send(u64::MAX) {
        Err(mpsc::error::TrySendError::Full(_)) => Ok((tx, rx)),
        _ => Err(format!("a channel of {DEFAULT_BUFFER} took one more")),
    }
}

/// A never-ready future with the size, alignment and output type of `F`: a
/// task running it is allocated exactly as a task running an `F`.
struct Bare<F>(MaybeUninit<F>);

impl<F: Future> Future for Bare<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<F::Output> {
        STARTED.fetch_add(1, Ordering::Relaxed);
        Poll::Pending
    }
}

/// Bytes allocated and not freed while `n` tasks from `spawn_one` start and
/// settle, on a fresh runtime after `setup`; and how many of them returned.
fn count_tasks<S, SFut, T>(
    n: usize,
    setup: impl FnOnce() -> SFut,
    spawn_one: impl Fn(&S, u64) -> T,
) -> Result<(isize, usize), String>
where
    SFut: Future<Output = Result<S, String>>,
    T: Future + Send + 'static,
    T::Output: Send + 'static,
{
    let rt = runtime()?;
    let result = rt.block_on(async {
        let state = setup().await?;
        STARTED.store(0, Ordering::SeqCst);
        GOT_ROOM.store(0, Ordering::SeqCst);
        alloc::start();
        for x in 0..n as u64 {
            // The join handle is dropped at once: keeping a million of them
            // would count the vector that holds them.
            drop(tokio::spawn(spawn_one(&state, x)));
        }
        let began = Instant::now();
        while STARTED.load(Ordering::SeqCst) < n {
            if began.elapsed() > START_LIMIT {
                alloc::stop();
                return Err(format!(
                    "only {} of {n} tasks started within {START_LIMIT:?}",
                    STARTED.load(Ordering::SeqCst)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(SETTLE).await;
        let bytes = alloc::stop();
        let returned = GOT_ROOM.load(Ordering::SeqCst);
        // Held until the count is taken: dropping the batcher or the
        // receiver would wake the waiters with an error.
        drop(state);
        Ok((bytes, returned))
    });
    // The waiting tasks are dropped with the runtime, unprocessed.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// The bytes per waiter beyond its task: the waiters' count less the bare
/// tasks' count, per task, plus the future the bare task only stood in for.
fn per_waiter(waiters: isize, bare: isize, n: usize, future_bytes: usize) -> f64 {
    (waiters - bare) as f64 / n as f64 + future_bytes as f64
}

fn measure<S, SFut, F>(
    n: usize,
    setup: impl Fn() -> SFut,
    waiter: impl Fn(&S, u64) -> F,
    call_size: impl Fn(&S) -> usize,
) -> Result<Waiting, String>
where
    SFut: Future<Output = Result<S, String>>,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let future_bytes = std::mem::size_of::<F>();
    // The call's size needs a runtime (baler's batcher is built inside one).
    let call_bytes = {
        let rt = runtime()?;
        let size = rt.block_on(async { setup().await.map(|s| call_size(&s)) });
        rt.shutdown_timeout(Duration::from_secs(5));
        size?
    };
    let (bare, _) = count_tasks(
        n,
        || async { Ok::<_, String>(PhantomData::<F>) },
        |_: &PhantomData<F>, _| Bare::<F>(MaybeUninit::uninit()),
    )?;
    let (waiters, got_room) = count_tasks(n, &setup, &waiter)?;
    if got_room > 0 {
        return Err(format!(
            "{got_room} of {n} submitters got room: the bound was not full"
        ));
    }
    Ok(Waiting {
        bytes_per_waiter: per_waiter(waiters, bare, n, future_bytes),
        future_bytes,
        call_bytes,
        task_bytes: bare as f64 / n as f64 - future_bytes as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_future_takes_the_room_of_the_future_it_stands_in_for() {
        type Big = std::future::Ready<[u64; 37]>;
        assert_eq!(std::mem::size_of::<Bare<Big>>(), std::mem::size_of::<Big>());
        assert_eq!(
            std::mem::align_of::<Bare<Big>>(),
            std::mem::align_of::<Big>()
        );
    }

    #[test]
    fn the_waiter_is_charged_its_future_and_what_it_allocated_beyond_the_bare_task() {
        // 1,000 tasks of 256 bytes each, bare; waiting, 48 more per task.
        assert_eq!(per_waiter(304_000, 256_000, 1_000, 96), 144.0);
    }
}
