//! The N+1 problem of a GraphQL server, solved with a `Loader`.
//!
//! A query lists 1,000 posts and asks for each post's author. Each post's
//! `author` resolver runs on its own and asks for one user: 1,000 resolvers,
//! 700 distinct users (30% of the resolvers ask for a user another one
//! already asked for). Done naively, that is 1,000 queries; through a loader,
//! a handful of `WHERE id IN (...)` queries, each user fetched once.
//!
//! The "database" is simulated: a query takes 5 ms whatever its size, and the
//! pool has 8 connections. Run with:
//!
//! ```text
//! cargo run -p baler --release --example n_plus_one
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baler::loader::{BatchFn, Loader};
use tokio::sync::Semaphore;

const RESOLVERS: usize = 1_000;
const DISTINCT: usize = 700;
const QUERY_TIME: Duration = Duration::from_millis(5);
const POOL: usize = 8;

#[derive(Debug, Clone)]
struct User {
    id: u64,
    name: String,
}

/// A database whose every query takes `QUERY_TIME` and holds one of `POOL`
/// connections.
struct Db {
    pool: Semaphore,
    queries: AtomicUsize,
}

impl Db {
    fn new() -> Arc<Self> {
        Arc::new(Db {
            pool: Semaphore::new(POOL),
            queries: AtomicUsize::new(0),
        })
    }

    /// `SELECT id, name FROM users WHERE id IN (ids)`: users that do not
    /// exist are simply absent from the answer.
    async fn users(&self, ids: &[u64]) -> Result<Vec<User>, std::io::Error> {
        let _connection = self.pool.acquire().await.map_err(std::io::Error::other)?;
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(QUERY_TIME).await;
        Ok(ids
            .iter()
            .filter(|&&id| id != 0)
            .map(|&id| User {
                id,
                name: format!("user {id}"),
            })
            .collect())
    }
}

/// The loader's batch function: one query for a whole batch of ids.
struct UsersById(Arc<Db>);

impl BatchFn<u64, User> for UsersById {
    type Error = std::io::Error;
    type Values = HashMap<u64, User>;

    async fn load(&self, ids: Vec<u64>) -> Result<HashMap<u64, User>, std::io::Error> {
        let users = self.0.users(&ids).await?;
        Ok(users.into_iter().map(|u| (u.id, u)).collect())
    }
}

/// The author ids of the 1,000 posts: 700 distinct users, and 300 posts by
/// a user who already wrote an earlier one (spread by a fixed LCG, so every
/// run asks the same).
fn author_ids() -> Vec<u64> {
    let mut ids: Vec<u64> = (1..=DISTINCT as u64).collect();
    let mut state = 0x2545_f491_u64;
    for _ in DISTINCT..RESOLVERS {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let earlier = ids[(state >> 33) as usize % ids.len()];
        ids.push(earlier);
    }
    // Interleave the repeats with the first requests, as resolvers would.
    for i in (1..ids.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ids.swap(i, (state >> 33) as usize % (i + 1));
    }
    ids
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let authors = author_ids();

    // Naive: every resolver queries for its own author.
    let db = Db::new();
    let start = Instant::now();
    let resolvers: Vec<_> = authors
        .iter()
        .map(|&id| {
            let db = db.clone();
            tokio::spawn(async move { db.users(&[id]).await })
        })
        .collect();
    for resolver in resolvers {
        resolver.await??;
    }
    let naive = (db.queries.load(Ordering::Relaxed), start.elapsed());

    // With a loader: every resolver still asks for one user.
    let db = Db::new();
    let users: Loader<u64, User, std::io::Error> = Loader::builder()
        .max_batch_size(100)
        .max_in_flight(POOL)
        .max_operation_time(Duration::from_secs(2))
        .build(UsersById(db.clone()))?;
    let start = Instant::now();
    let resolvers: Vec<_> = authors
        .iter()
        .map(|&id| {
            let users = users.clone();
            tokio::spawn(async move { users.load(id).await })
        })
        .collect();
    for (resolver, &id) in resolvers.into_iter().zip(&authors) {
        let user = resolver.await??;
        assert_eq!(user.id, id, "each resolver got its own author");
        assert_eq!(user.name, format!("user {id}"));
    }
    let loaded = (db.queries.load(Ordering::Relaxed), start.elapsed());
    let stats = users.stats();

    println!(
        "{RESOLVERS} author resolvers, {DISTINCT} distinct users; a query takes {QUERY_TIME:?}, \
         the pool has {POOL} connections"
    );
    println!("naive:  {:>4} queries in {:>8.1?}", naive.0, naive.1);
    println!(
        "loader: {:>4} queries in {:>8.1?}  ({} batch calls for {} keys fetched; {} loads joined \
         a fetch in flight, {} were cache hits)",
        loaded.0, loaded.1, stats.batches, stats.fetches, stats.joined, stats.cache_hits
    );
    assert_eq!(stats.fetches, DISTINCT as u64, "each user was fetched once");
    users.shutdown(None).await;
    Ok(())
}
