//! A Redis [`LeaseStore`] for baler's shared capacity.
//!
//! Several processes share one capacity per second (a datastore's
//! throughput) by leasing its partitions in one Redis. Each partition is one
//! key, `{prefix}:partition:{n}`, whose value is the owner token of the
//! instance that holds it and whose expiry is the lease's:
//!
//! - **atomic**: acquire, renew and release are each one Lua script, so
//!   "is it free or mine? then take it" can never interleave with another
//!   instance's;
//! - **Redis's clock**: expiries are set with `PX` and `PEXPIRE`, counted by
//!   the Redis server; the clients' clocks never decide who holds what;
//! - **owner token per instance**: baler gives every shared capacity its own
//!   random token, so two processes (or two capacities in one process) never
//!   mistake each other's leases for their own.
//!
//! The connection is made on first use and made again after an error, so a
//! process can start while Redis is down, and recovers when Redis returns.
//!
//! ```no_run
//! use baler::shared::SharedCapacity;
//! use baler_redis::RedisLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisLeaseStore::new("redis://127.0.0.1:6379", "orders-db")?;
//! let capacity = SharedCapacity::new(store)
//!     .reserved(100)          // this instance's own 100/s
//!     .shared(10_000, 1_000)  // 10 partitions of 1,000/s shared by every instance
//!     .build()?;
//! # let _ = capacity;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod scripts;
mod store;

pub use store::{RedisLeaseStore, RedisStoreError};

/// The store's own traits and errors, for implementing against it.
pub use baler::shared::{LeaseStore, LeaseStoreError};
