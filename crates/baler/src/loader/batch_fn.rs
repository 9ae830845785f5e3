//! The user's batch function, and the engine handler that calls it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::handler::{Batch, Handler, HandlerResult, Outcome};
use crate::loader::error::FetchError;
use crate::loader::hashed::{ByHash, Hashed, KeyHasher, PassHash};

/// Fetches many keys at once: the one thing a [`Loader`](crate::loader::Loader) needs
/// from its user.
///
/// It receives the keys of one batch (each key once) and answers with
/// key/value pairs, in any order: a `HashMap<K, V>`, a `Vec<(K, V)>`, or any
/// other iterator of pairs. The loader matches answers to callers **by key**,
/// never by position, so an answer in a different order than the keys still
/// reaches the right callers. A key missing from the answer resolves as
/// [`LoadError::NotFound`](crate::loader::LoadError::NotFound); pairs for keys that
/// were not asked for are ignored (and not cached); when a key is answered
/// twice, the first answer counts. An `Err` fails every key of the batch with
/// [`LoadError::Fetch`](crate::loader::LoadError::Fetch), one error shared by all.
///
/// Implement it for a type that holds your database pool, or wrap a closure
/// with [`batch_fn`].
///
/// ```
/// use std::collections::HashMap;
/// use baler::loader::BatchFn;
///
/// struct Users;
///
/// impl BatchFn<u64, String> for Users {
///     type Error = std::io::Error;
///     type Values = HashMap<u64, String>;
///
///     async fn load(&self, ids: Vec<u64>) -> Result<HashMap<u64, String>, std::io::Error> {
///         Ok(ids.into_iter().map(|id| (id, format!("user {id}"))).collect())
///     }
/// }
/// ```
pub trait BatchFn<K, V>: Send + Sync + 'static {
    /// What a failed batch resolves with.
    type Error: Send + Sync + 'static;
    /// The answer: key/value pairs in any order.
    type Values: IntoIterator<Item = (K, V)>;

    /// Fetches the values of `keys`.
    fn load(&self, keys: Vec<K>) -> impl Future<Output = Result<Self::Values, Self::Error>> + Send;
}

/// A [`BatchFn`] made from a closure; see [`batch_fn`].
#[derive(Clone, Copy)]
pub struct BatchFnOf<F> {
    f: F,
}

impl<F> std::fmt::Debug for BatchFnOf<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchFnOf")
    }
}

/// Makes a [`BatchFn`] from an async closure over the batch's keys.
///
/// ```
/// use std::collections::HashMap;
///
/// let users = baler::loader::batch_fn(|ids: Vec<u64>| async move {
///     let found: HashMap<u64, String> = ids.into_iter().map(|id| (id, format!("user {id}"))).collect();
///     Ok::<_, std::io::Error>(found)
/// });
/// # let _ = users;
/// ```
pub fn batch_fn<F>(f: F) -> BatchFnOf<F> {
    BatchFnOf { f }
}

impl<F, Fut, K, V, I, E> BatchFn<K, V> for BatchFnOf<F>
where
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<I, E>> + Send + 'static,
    I: IntoIterator<Item = (K, V)>,
    E: Send + Sync + 'static,
{
    type Error = E;
    type Values = I;

    fn load(&self, keys: Vec<K>) -> impl Future<Output = Result<I, E>> + Send {
        (self.f)(keys)
    }
}

/// The engine handler of a loader: calls the batch function with the batch's
/// keys and answers each operation (one per key) with that key's value.
pub(crate) struct LoaderHandler<F, V> {
    pub(crate) f: F,
    /// The loader's key hasher, which hashed the batch's keys.
    pub(crate) hasher: KeyHasher,
    pub(crate) _values: PhantomData<fn() -> V>,
}

impl<F, K, V> Handler<Hashed<K>> for LoaderHandler<F, V>
where
    F: BatchFn<K, V>,
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Output = V;
    type Error = FetchError<F::Error>;

    async fn handle(&self, batch: Batch<Hashed<K>>) -> HandlerResult<V, FetchError<F::Error>> {
        let items = batch.items();
        // Each distinct key and the position of its first operation, filed
        // under the hash each key came with. The loader queues each key once
        // while it is in flight, but a `clear` lets a key be queued again
        // before its first batch went; the batch function still sees it once.
        let mut first: HashMap<ByHash<'_, K>, usize, PassHash> =
            HashMap::with_capacity_and_hasher(items.len(), PassHash::default());
        let mut keys: Vec<K> = Vec::with_capacity(items.len());
        // Operations whose key came earlier in the batch, with that
        // earlier operation's position.
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = ByHash {
                hash: item.hash,
                key: &item.key,
            };
            match first.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(i);
                    keys.push(item.key.clone());
                }
                Entry::Occupied(e) => repeats.push((i, *e.get())),
            }
        }
        let answer = self
            .f
            .load(keys)
            .await
            .map_err(|e| FetchError::Batch(Arc::new(e)))?;
        // Each answer goes straight to its key's first operation: one hash
        // of the answered key per pair, none when the answer comes in the
        // order of the keys (the j-th pair is then the j-th key, which is
        // the j-th operation when no key repeats).
        let mut outcomes: Vec<Outcome<V, FetchError<F::Error>>> = Vec::with_capacity(items.len());
        outcomes.resize_with(items.len(), || Outcome::Failed(FetchError::NotFound));
        let in_order = repeats.is_empty();
        for (j, (key, value)) in answer.into_iter().enumerate() {
            let at = match items.get(j) {
                Some(item) if in_order && item.key == key => Some(j),
                _ => first
                    .get(&ByHash {
                        hash: self.hasher.hash(&key),
                        key: &key,
                    })
                    .copied(),
            };
            if let Some(outcome) = at.and_then(|i| outcomes.get_mut(i)) {
                // The first answer for a key counts.
                if matches!(outcome, Outcome::Failed(_)) {
                    *outcome = Outcome::Done(value);
                }
            }
        }
        for (i, earlier) in repeats {
            if let Outcome::Done(v) = &outcomes[earlier] {
                outcomes[i] = Outcome::Done(v.clone());
            }
        }
        Ok(outcomes)
    }
}
