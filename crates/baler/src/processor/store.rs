//! Stores: where a [`Processor`](crate::processor::Processor) loads a resource from and
//! saves it back to.

use std::fmt;
use std::future::Future;

/// Loads the resource of a key before a batch and saves it after.
///
/// A [`Processor`](crate::processor::Processor) calls [`load`](Self::load) once at the
/// start of every batch, runs the batch's operations on the loaded resource in
/// order, and calls [`save`](Self::save) once at the end. Both calls are bounded
/// by the processor's [`max_store_time`](crate::processor::ProcessorBuilder::max_store_time):
/// past it the future is dropped and the batch fails. Two batches of the same
/// key never overlap, so `load` always sees what the previous `save` wrote.
///
/// Implement it for a type that holds your connection pool; for quick use,
/// wrap two closures with [`store_fn`].
///
/// ```
/// use baler::processor::Store;
///
/// /// Counters kept in memory (a real store talks to a database).
/// struct Counters(std::sync::Mutex<std::collections::HashMap<String, i64>>);
///
/// impl Store<String> for Counters {
///     type Resource = i64;
///     type Error = std::convert::Infallible;
///
///     async fn load(&self, key: &String) -> Result<i64, Self::Error> {
///         Ok(self.0.lock().unwrap().get(key).copied().unwrap_or(0))
///     }
///
///     async fn save(&self, key: &String, value: i64) -> Result<(), Self::Error> {
///         self.0.lock().unwrap().insert(key.clone(), value);
///         Ok(())
///     }
/// }
/// ```
pub trait Store<K>: Send + Sync + 'static {
    /// What is loaded, changed by the operations, and saved.
    type Resource: Send + 'static;
    /// What a failed load or save returns.
    type Error: Send + Sync + 'static;

    /// Loads the resource of `key`. An error fails every operation of the
    /// batch, and none of them runs.
    fn load(&self, key: &K) -> impl Future<Output = Result<Self::Resource, Self::Error>> + Send;

    /// Saves the resource of `key` after the batch's operations ran on it. An
    /// error fails every operation that ran, and their effects are not
    /// persisted (as far as the store is atomic).
    fn save(
        &self,
        key: &K,
        resource: Self::Resource,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A [`Store`] made from two closures; see [`store_fn`].
#[derive(Clone, Copy)]
pub struct StoreFn<L, S> {
    load: L,
    save: S,
}

impl<L, S> fmt::Debug for StoreFn<L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreFn")
    }
}

/// Makes a [`Store`] from an async `load(key)` and an async
/// `save(key, resource)`, both taking their arguments by value.
///
/// ```
/// use baler::processor::store_fn;
///
/// let store = store_fn(
///     |_key: u32| async move { Ok::<_, std::io::Error>(Vec::<String>::new()) },
///     |_key: u32, _lines: Vec<String>| async move { Ok::<_, std::io::Error>(()) },
/// );
/// # let _ = store;
/// ```
pub fn store_fn<L, S>(load: L, save: S) -> StoreFn<L, S> {
    StoreFn { load, save }
}

impl<K, R, E, L, LF, S, SF> Store<K> for StoreFn<L, S>
where
    K: Clone + Send + Sync + 'static,
    R: Send + 'static,
    E: Send + Sync + 'static,
    L: Fn(K) -> LF + Send + Sync + 'static,
    LF: Future<Output = Result<R, E>> + Send,
    S: Fn(K, R) -> SF + Send + Sync + 'static,
    SF: Future<Output = Result<(), E>> + Send,
{
    type Resource = R;
    type Error = E;

    fn load(&self, key: &K) -> impl Future<Output = Result<R, E>> + Send {
        (self.load)(key.clone())
    }

    fn save(&self, key: &K, resource: R) -> impl Future<Output = Result<(), E>> + Send {
        (self.save)(key.clone(), resource)
    }
}
