//! An Azure Blob [`LeaseStore`] for baler's shared capacity.
//!
//! Several processes share one capacity per second (a datastore's
//! throughput) by leasing its partitions as blobs in one storage account:
//! partition `n` is the zero-byte block blob `partition-{n}` in the
//! capacity's container, and an instance holds the partition while it holds
//! the blob's lease.
//!
//! - **provisioned as needed**: the container and each partition's blob are
//!   created when first used, and an existing blob is never overwritten;
//! - **the service's clock**: leases expire when the storage service says
//!   so; they last **15 to 60 seconds**, and
//!   [`SharedCapacity::build`](baler::shared::SharedCapacity::build) refuses a lease
//!   time outside that;
//! - **one lease id per instance**: every shared capacity has its own random
//!   owner token, and its lease id is a GUID made from it;
//! - **fair sharing**: each instance's demand is a blob too, so instances
//!   that all want more than there is share the partitions evenly.
//!
//! Requests go over HTTPS (rustls) or plain HTTP for a local emulator,
//! signed with the account key (Shared Key) or carrying a shared access
//! signature; or over HTTPS only with a Microsoft Entra ID bearer token from
//! a [`TokenProvider`] (managed identity, workload identity), for accounts
//! that allow no key. With the `azure-identity` feature, `AzureCredential`
//! makes any of the Azure SDK's credentials a provider. A store that cannot be reached makes the capacity fall back to
//! its reserved part until it can again.
//!
//! ```no_run
//! use std::time::Duration;
//! use baler::shared::SharedCapacity;
//! use baler_azure::AzureLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let connection_string = std::env::var("AZURE_STORAGE_CONNECTION_STRING")?;
//! let store = AzureLeaseStore::from_connection_string(&connection_string, "orders-db")?;
//! let capacity = SharedCapacity::new(store)
//!     .reserved(100)                        // this instance's own 100/s
//!     .shared(10_000, 1_000)                // 10 partitions of 1,000/s shared by every instance
//!     .lease_time(Duration::from_secs(15))  // blob leases last 15 to 60 s
//!     .build()?;
//! # let _ = capacity;
//! # Ok(())
//! # }
//! ```
//!
//! A lease time the service cannot grant is refused when the capacity is
//! built:
//!
//! ```
//! use std::time::Duration;
//! use baler::{ConfigError, shared::SharedCapacity};
//! use baler_azure::AzureLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = AzureLeaseStore::from_connection_string("UseDevelopmentStorage=true", "orders-db")?;
//! let refused = SharedCapacity::new(store)
//!     .shared(10_000, 1_000)
//!     .lease_time(Duration::from_secs(10))
//!     .build()
//!     .unwrap_err();
//! assert!(matches!(refused, ConfigError::LeaseTimeUnsupported { .. }));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod account;
#[cfg(feature = "azure-identity")]
mod credential;
mod demand;
mod sign;
mod store;
mod token;

pub use account::{AzureStoreError, DEVELOPMENT_ACCOUNT, DEVELOPMENT_ENDPOINT, DEVELOPMENT_KEY};
#[cfg(feature = "azure-identity")]
pub use credential::AzureCredential;
pub use store::{AzureLeaseStore, MAX_LEASE_TIME, MIN_LEASE_TIME};
pub use token::{
    AccessToken, AzureAuthError, TokenError, TokenFuture, TokenProvider, STORAGE_SCOPE,
};

/// The store's own traits and errors, for implementing against it.
pub use baler::shared::{LeaseStore, LeaseStoreError};
