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
//! ## TLS
//!
//! With the `tls` feature (on by default), a `rediss://host:port` URL
//! connects to Redis's `tls-port` over TLS (rustls, with the ring crypto
//! provider: no OpenSSL needed). The server's certificate must name the
//! URL's host and be signed by a CA that the system trusts (its trust store,
//! as `/etc/ssl/certs` on Debian), or by the CA whose PEM certificate is
//! given to [`RedisLeaseStore::with_ca`], for a private CA. Certificate
//! checks cannot be turned off: a `rediss://…#insecure` URL is refused.
//! Clients present no certificate, so the server must not require one
//! (`tls-auth-clients no`, or `optional`).
//!
//! A handshake that fails is a [`LeaseStoreError::Unreachable`] whose source
//! is a [`RedisStoreError::TlsHandshake`] (which server, what the TLS library
//! said, what to check) or [`RedisStoreError::TlsNoAnswer`] (most often a
//! plain port given as `rediss://`).
//!
//! If no rustls crypto provider is installed for the process when a store is
//! made, ring's is installed as the process's default: the Redis client
//! needs one.
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
mod tls;

pub use store::{RedisLeaseStore, RedisStoreError};

/// The store's own traits and errors, for implementing against it.
pub use baler::shared::{LeaseStore, LeaseStoreError};
