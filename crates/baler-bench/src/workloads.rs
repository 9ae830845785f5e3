//! The workloads, each one measurement on a fresh tokio runtime.
//!
//! [`Runs`] and [`LoaderRuns`] are the object-safe faces of
//! [`Contender`] and [`LoaderContender`], implemented for every adapter, so
//! the harness can keep a list of contenders of different types.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::alloc;
use crate::contenders::{Contender, Setup};
use crate::loaders::{value_of, LoaderContender};
use crate::shared::{BoxError, Shared, DEFAULT_BUFFER, MAX_BATCH};

/// Worker threads of every measurement's runtime (the machine's cores, at
/// least 2), the same for all contenders.
pub fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))
}

/// One throughput measurement.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub ops_per_sec: f64,
    pub ops: u64,
    pub batches: u64,
    /// Distinct keys the load function saw (loaders only).
    pub keys: u64,
}

/// One latency measurement: percentiles of one submitter's operations.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub ops: u64,
}

/// One memory measurement.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub bytes_per_op: f64,
    /// Of which the caller's future (the boxed `call` future, as allocated).
    pub future_bytes: f64,
}

/// What the harness runs on a batcher.
pub trait Runs {
    fn name(&self) -> &'static str;
    fn config(&self) -> &'static str;
    /// `n` closed-loop submitters for `window`.
    fn throughput(&self, n: usize, window: Duration) -> Result<Throughput, String>;
    /// One submitter, one operation at a time, for `window`.
    fn latency(&self, window: Duration) -> Result<Latency, String>;
    /// Bytes per operation with `pending` operations waiting.
    fn memory(&self, pending: usize) -> Result<Memory, String>;
}

/// What the harness runs on a loader.
pub trait LoaderRuns {
    fn name(&self) -> &'static str;
    fn config(&self) -> &'static str;
    /// `n` closed-loop callers for `window`; `repeated_pct` of the loads ask
    /// for one of 32 hot keys, the others for a key nobody else asks for.
    fn throughput(
        &self,
        n: usize,
        repeated_pct: u64,
        window: Duration,
    ) -> Result<Throughput, String>;
}

/// Spawns `n` tasks running `op(i, k)` for k = 0, 1, ... until `window` has
/// passed; returns the operations done and the time from the first spawn to
/// the last task's end.
async fn closed_loop<F, Fut>(n: usize, window: Duration, op: F) -> Result<(u64, Duration), String>
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..n as u64)
        .map(|i| {
            let stop = stop.clone();
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(i, done).await?;
                    done += 1;
                }
                Ok::<u64, BoxError>(done)
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0;
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(done)) => ops += done,
            Ok(Err(e)) => failure = Some(format!("an operation failed: {e}")),
            Err(e) => failure = Some(format!("a submitter panicked: {e}")),
        }
    }
    let elapsed = start.elapsed();
    match failure {
        Some(f) => Err(f),
        None => Ok((ops, elapsed)),
    }
}

fn percentile(sorted: &[u64], pct: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * pct / 100).min(sorted.len() - 1);
    sorted[i] as f64 / 1_000.0
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

impl<C: Contender> Runs for C {
    fn name(&self) -> &'static str {
        Contender::name(self)
    }

    fn config(&self) -> &'static str {
        Contender::config(self)
    }

    fn throughput(&self, n: usize, window: Duration) -> Result<Throughput, String> {
        let rt = runtime()?;
        let result = rt.block_on(async {
            let shared = Shared::open();
            let handle = self.start(&Setup {
                buffer: DEFAULT_BUFFER,
                shared: shared.clone(),
            });
            let h = handle.clone();
            let (ops, elapsed) = closed_loop(n, window, move |i, k| {
                let h = h.clone();
                async move { C::call(&h, (i << 32) | k).await }
            })
            .await?;
            C::stop(handle).await;
            Ok(Throughput {
                ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
                ops,
                batches: shared.batches(),
                keys: shared.keys(),
            })
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    }

    fn latency(&self, window: Duration) -> Result<Latency, String> {
        let rt = runtime()?;
        let result = rt.block_on(async {
            let shared = Shared::open();
            let handle = self.start(&Setup {
                buffer: DEFAULT_BUFFER,
                shared,
            });
            let h = handle.clone();
            let task = tokio::spawn(async move {
                let mut samples: Vec<u64> = Vec::with_capacity(1 << 20);
                let end = Instant::now() + window;
                let mut x = 0u64;
                while Instant::now() < end {
                    let t0 = Instant::now();
                    C::call(&h, x).await?;
                    samples.push(t0.elapsed().as_nanos() as u64);
                    x += 1;
                }
                Ok::<_, BoxError>(samples)
            });
            let mut samples = match task.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("an operation failed: {e}")),
                Err(e) => return Err(format!("the submitter panicked: {e}")),
            };
            C::stop(handle).await;
            samples.sort_unstable();
            Ok(Latency {
                p50_us: percentile(&samples, 50),
                p99_us: percentile(&samples, 99),
                ops: samples.len() as u64,
            })
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    }

    fn memory(&self, pending: usize) -> Result<Memory, String> {
        if let Some(reason) = self.memory_unsupported() {
            return Err(reason.to_owned());
        }
        let rt = runtime()?;
        let result = rt.block_on(async {
            // The handler holds every batch at the gate, so operations pile up.
            let shared = Shared::closed();
            let handle = self.start(&Setup {
                buffer: pending + 64 * MAX_BATCH,
                shared: shared.clone(),
            });
            let mut futures: Vec<Option<Pending<'_>>> = Vec::with_capacity(pending);
            tokio::time::sleep(Duration::from_millis(20)).await;
            alloc::start();
            for x in 0..pending as u64 {
                // Unconstrained: tokio's co-operative budget would otherwise
                // make all but the first 128 sends of this one poll return
                // Pending without submitting.
                futures.push(Some(Box::pin(tokio::task::unconstrained(C::call(
                    &handle, x,
                )))));
            }
            let future_bytes = futures
                .first()
                .and_then(|f| f.as_ref())
                .map_or(0, |f| std::mem::size_of_val(&**f));
            // Poll each once: it submits, then waits for its result.
            let mut finished = 0usize;
            std::future::poll_fn(|cx| {
                for slot in futures.iter_mut() {
                    if let Some(f) = slot {
                        if f.as_mut().poll(cx).is_ready() {
                            *slot = None;
                            finished += 1;
                        }
                    }
                }
                Poll::Ready(())
            })
            .await;
            // Let the batcher's own tasks take in what was submitted.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let bytes = alloc::stop();
            // Let it all go unprocessed: drop the waiting calls, open the
            // gate, drop the batcher; the runtime's shutdown drops its tasks.
            drop(futures);
            shared.release();
            C::abandon(handle);
            if finished > pending / 100 {
                return Err(format!(
                    "{finished} of {pending} operations finished while the handler was held"
                ));
            }
            Ok(Memory {
                bytes_per_op: bytes as f64 / pending as f64,
                future_bytes: future_bytes as f64,
            })
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    }
}

/// The key caller `i` asks for in its `k`th load: with probability
/// `repeated_pct`% one of 32 hot keys, else a key of its own.
fn key(i: u64, k: u64, repeated_pct: u64) -> u64 {
    // splitmix64: a cheap, well-mixed hash of (i, k).
    let mut z = ((i << 32) | k).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z % 100 < repeated_pct {
        (1 << 63) | ((z >> 8) % 32)
    } else {
        (i << 32) | k
    }
}

impl<L: LoaderContender> LoaderRuns for L {
    fn name(&self) -> &'static str {
        LoaderContender::name(self)
    }

    fn config(&self) -> &'static str {
        LoaderContender::config(self)
    }

    fn throughput(
        &self,
        n: usize,
        repeated_pct: u64,
        window: Duration,
    ) -> Result<Throughput, String> {
        let rt = runtime()?;
        let result = rt.block_on(async {
            let shared = Shared::open();
            let handle = self.start(&shared);
            let h = handle.clone();
            let (ops, elapsed) = closed_loop(n, window, move |i, k| {
                let h = h.clone();
                async move {
                    let key = key(i, k, repeated_pct);
                    let value = L::load(&h, key).await?;
                    if value != value_of(key) {
                        return Err(format!("key {key} got {value}").into());
                    }
                    Ok(())
                }
            })
            .await?;
            L::stop(handle).await;
            Ok(Throughput {
                ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
                ops,
                batches: shared.batches(),
                keys: shared.keys(),
            })
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_the_asked_share_of_keys_repeat_and_the_rest_are_unique() {
        let keys: Vec<u64> = (0..10_000).map(|k| key(3, k, 30)).collect();
        let hot = keys.iter().filter(|&&k| k >> 63 == 1).count();
        assert!((2_700..3_300).contains(&hot), "{hot} hot keys of 10,000");
        let mut cold: Vec<u64> = keys.iter().copied().filter(|&k| k >> 63 == 0).collect();
        let n = cold.len();
        cold.sort_unstable();
        cold.dedup();
        assert_eq!(cold.len(), n, "cold keys are unique");
        assert!((0..10_000).all(|k| key(3, k, 0) >> 63 == 0));
    }
}
