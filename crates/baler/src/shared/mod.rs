//! Shared capacity: one capacity per second shared by several processes
//! through partition leases.
//!
//! A datastore allows, say, 10,000 cost units per second, and four instances
//! of a service write to it. Each instance has a part of its own, the
//! **reserved** capacity, and the rest, the **shared** capacity, is cut into
//! **partitions** worth a **factor** each. An instance may spend its reserved
//! capacity plus the worth of the partitions whose **leases** it holds in a
//! [`LeaseStore`] that every instance reaches (Redis, a blob store, or
//! [`MemoryLeaseStore`] within one process).
//!
//! ```text
//!   target (cost held by the batchers) ──► partitions wanted ──► lease task
//!                                                                  │ acquire in parallel, random order
//!   rate = reserved + Σ worth(partitions counted as held)  ◄───────┤ renew while wanted
//!                                                                  │ release when the target drops
//!                                                                  ▼
//!                                                             LeaseStore (its clock decides expiry)
//! ```
//!
//! When the store keeps demands, every instance also announces how many
//! partitions it needs and holds no more than its max-min fair share, so the
//! partitions are shared between instances rather than kept by whoever came
//! first.
//!
//! The pieces, one per file: [`LeaseStore`] (the store's contract),
//! [`MemoryLeaseStore`], [`SharedCapacity`] (the builder and its timing), the
//! source the engine draws on, and the lease task with its invariants.

mod builder;
mod leaser;
mod memory;
mod partitions;
mod source;
mod store;

pub use builder::{SharedCapacity, SharedLeases, DEFAULT_LEASE_TIME};
pub use memory::MemoryLeaseStore;
pub use partitions::MAX_PARTITIONS;
pub use store::{Acquired, Demand, LeaseFuture, LeaseStore, LeaseStoreError};
