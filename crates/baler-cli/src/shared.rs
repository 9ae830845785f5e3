//! `--shared`: one capacity shared by several `baler ingest` processes
//! through partition leases in Redis.
//!
//! ```text
//! baler ingest --sink a.db --capacity 2000 --shared redis://127.0.0.1:6379 &
//! baler ingest --sink b.db --capacity 2000 --shared redis://127.0.0.1:6379
//! ```
//!
//! `--capacity` is then the capacity per second shared by every process that
//! uses the same Redis and the same `--shared-name` (default: the table). It
//! is cut into partitions worth `--factor` each; a process writes at its
//! `--reserved` rate plus the worth of the partitions it holds leases on (see
//! [`baler::shared::SharedCapacity`]). Redis is asked once before anything is
//! produced, so a wrong URL or a Redis that is down stops the run at once;
//! the leases are given back when the run ends, Ctrl-C included.
//!
//! `--shared rediss://HOST:PORT` talks to Redis's TLS port; the server's
//! certificate must be signed by a CA the system trusts, or by the one in
//! `--shared-ca FILE` (PEM).

use std::time::Duration;

use baler::{
    shared::{SharedCapacity, SharedLeases, MAX_PARTITIONS},
    Capacity,
};
use baler_redis::{RedisLeaseStore, RedisStoreError};

use crate::cli::IngestArgs;
use crate::sink::{error_chain, redact};

/// How long the check at start may take to reach Redis.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a process renews its leases and, while it has what it needs,
/// tells the others what it needs (so that one holding more than its share
/// hears of a newcomer within this). Quicker than the library's default (a
/// quarter of the 10 s lease): a run lasts seconds, and Redis answers in
/// well under a millisecond.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How often a process that needs more than it holds looks for partitions
/// and for a change in the others' needs.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// How long giving the leases back at the end may take; leases not given
/// back expire on their own.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the `--shared` flags cannot be used. Nothing was produced.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// `--shared` without `--capacity`.
    #[error(
        "--shared needs --capacity: the capacity per second that the processes share \
         (e.g. --shared {url} --capacity 2000)"
    )]
    NoCapacity {
        /// The `--shared` URL (password hidden).
        url: String,
    },
    /// A figure that must be at least 1 was 0.
    #[error("{flag} 0 leaves nothing to share; {hint}")]
    Zero {
        /// The flag.
        flag: &'static str,
        /// What to give instead.
        hint: &'static str,
    },
    /// `--capacity / --factor` makes too many partitions.
    #[error(
        "--capacity {capacity} with --factor {factor} makes {partitions} partitions, more than \
         the {max} allowed; raise --factor to at least {min_factor}"
    )]
    TooManyPartitions {
        /// The shared capacity.
        capacity: u64,
        /// The factor.
        factor: u64,
        /// The partitions it makes.
        partitions: u64,
        /// The most partitions allowed.
        max: u32,
        /// The smallest factor that works.
        min_factor: u64,
    },
    /// `--shared-name` was empty.
    #[error("--shared-name is empty; give the shared capacity a name, such as the database's")]
    EmptyName,
    /// `--shared` came without a URL and no variable names a Redis.
    #[error("--shared has no URL and neither BALER_REDIS nor REDIS_URL is set; give --shared redis://HOST:PORT or set one of them")]
    NoUrl,
    /// `--shared` is not a Redis URL.
    #[error(
        "--shared {url} is not a Redis URL ({reason}); write it as redis://HOST:PORT, or \
         rediss://HOST:PORT for TLS"
    )]
    BadUrl {
        /// The URL (password hidden).
        url: String,
        /// What the Redis client said.
        reason: String,
    },
    /// `--shared rediss://…#insecure`.
    #[error(
        "--shared {url}: baler does not skip the server's certificate check (#insecure); drop \
         #insecure, and give the CA that signed the server's certificate with --shared-ca FILE"
    )]
    Insecure {
        /// The URL (password hidden).
        url: String,
    },
    /// `--shared-ca` cannot be used.
    #[error("--shared-ca {path}: {reason}")]
    BadCa {
        /// The file given.
        path: String,
        /// Why, and what to give instead.
        reason: String,
    },
    /// Redis could not be reached, or did not answer as Redis.
    #[error("--shared {url}: {reason} (nothing was produced)")]
    Unreachable {
        /// The URL (password hidden).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The shared capacity could not be built.
    #[error("--shared: {0}")]
    Config(#[from] baler::ConfigError),
}

/// The figures of a shared capacity, read from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPlan {
    /// The Redis URL.
    pub url: String,
    /// The CA to trust for a `rediss://` URL, instead of the system's.
    pub ca: Option<std::path::PathBuf>,
    /// The name of the shared capacity in Redis.
    pub name: String,
    /// The capacity per second shared by every process.
    pub shared: u64,
    /// What one partition is worth per second.
    pub factor: u64,
    /// This process's own capacity per second.
    pub reserved: u64,
}

impl SharedPlan {
    /// The plan for `args`, or `None` without `--shared`.
    ///
    /// ```
    /// use baler_cli::cli::{Cli, Command};
    /// use baler_cli::shared::SharedPlan;
    /// use clap::Parser;
    ///
    /// let Command::Ingest(args) = Cli::parse_from([
    ///     "baler", "ingest", "--capacity", "2000", "--shared", "redis://127.0.0.1:6379",
    /// ]).command else {
    ///     unreachable!("parsed as ingest")
    /// };
    /// let plan = SharedPlan::from_args(&args).unwrap().unwrap();
    /// assert_eq!((plan.shared, plan.factor, plan.reserved), (2000, 200, 0));
    /// assert_eq!(plan.name, "records"); // the table
    /// ```
    ///
    /// # Errors
    ///
    /// A [`SharedError`] naming the flag to change.
    pub fn from_args(args: &IngestArgs) -> Result<Option<SharedPlan>, SharedError> {
        let Some(url) = &args.shared_url()? else {
            return Ok(None);
        };
        let shared = args
            .capacity
            .ok_or_else(|| SharedError::NoCapacity { url: redact(url) })?;
        if shared == 0 {
            return Err(SharedError::Zero {
                flag: "--capacity",
                hint: "give the capacity per second that the processes share",
            });
        }
        let factor = match args.factor {
            Some(0) => {
                return Err(SharedError::Zero {
                    flag: "--factor",
                    hint: "give what one partition is worth per second, or leave it out for a \
                           tenth of --capacity",
                })
            }
            Some(f) => f,
            None => shared.div_ceil(10),
        };
        let partitions = shared.div_ceil(factor);
        if partitions > u64::from(MAX_PARTITIONS) {
            return Err(SharedError::TooManyPartitions {
                capacity: shared,
                factor,
                partitions,
                max: MAX_PARTITIONS,
                min_factor: shared.div_ceil(u64::from(MAX_PARTITIONS)),
            });
        }
        let name = args
            .shared_name
            .clone()
            .unwrap_or_else(|| args.table.clone());
        if name.is_empty() {
            return Err(SharedError::EmptyName);
        }
        Ok(Some(SharedPlan {
            url: url.clone(),
            ca: args.shared_ca.clone(),
            name,
            shared,
            factor,
            reserved: args.reserved.unwrap_or(0),
        }))
    }

    /// How the run's first line shows it.
    pub fn describe(&self) -> String {
        format!(
            "{}/s shared through {} (name {:?}, {} partitions of {}/s), {}/s reserved",
            self.shared,
            redact(&self.url),
            self.name,
            self.shared.div_ceil(self.factor),
            self.factor,
            self.reserved,
        )
    }

    /// Checks that Redis answers, then starts the shared capacity.
    ///
    /// # Errors
    ///
    /// [`SharedError::BadUrl`] or [`SharedError::Unreachable`] before any
    /// lease is taken.
    pub async fn start(&self) -> Result<(Capacity, Leases), SharedError> {
        let url = redact(&self.url);
        let made = match &self.ca {
            None => RedisLeaseStore::new(&self.url, &self.name),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| SharedError::BadCa {
                    path: path.display().to_string(),
                    reason: format!(
                        "cannot read it ({e}); give the PEM file of the CA that signed the \
                         Redis server's certificate"
                    ),
                })?;
                RedisLeaseStore::with_ca(&self.url, &self.name, &pem)
            }
        };
        let bad_ca = |reason: String| SharedError::BadCa {
            path: self
                .ca
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason,
        };
        let store = made.map_err(|e| match e {
            RedisStoreError::EmptyName => SharedError::EmptyName,
            RedisStoreError::CaWithoutTls { .. } => bad_ca(format!(
                "a CA is only used over TLS, and --shared {url} is not rediss://; write \
                 --shared rediss://HOST:PORT (Redis's tls-port), or leave --shared-ca out"
            )),
            RedisStoreError::InvalidCa { reason, .. } => bad_ca(format!(
                "{reason}; give the PEM file (-----BEGIN CERTIFICATE-----) of the CA that \
                 signed the Redis server's certificate"
            )),
            // The Redis client's own words, without the URL (and any
            // password in it).
            RedisStoreError::InvalidUrl { source, .. } => SharedError::BadUrl {
                url: url.clone(),
                reason: error_chain(&source),
            },
            RedisStoreError::Insecure { .. } => SharedError::Insecure { url: url.clone() },
            other => SharedError::BadUrl {
                url: url.clone(),
                reason: other.to_string(),
            },
        })?;
        let store = store.timeout(CHECK_TIMEOUT);
        // One GET: cheap, and it fails as the lease calls would.
        match tokio::time::timeout(CHECK_TIMEOUT * 2, store.holder(0)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(SharedError::Unreachable {
                    url,
                    reason: error_chain(&e),
                })
            }
            Err(_) => {
                return Err(SharedError::Unreachable {
                    url,
                    reason: format!("no answer within {:?}", CHECK_TIMEOUT * 2),
                })
            }
        }
        let (capacity, leases) = SharedCapacity::new(store)
            .reserved(self.reserved)
            .shared(self.shared, self.factor)
            .renew_every(RENEW_EVERY)
            .retry_every(RETRY_EVERY)
            .start()?;
        Ok((capacity, Leases(leases)))
    }
}

/// The leases of a run's shared capacity, given back at its end.
#[derive(Debug)]
pub struct Leases(SharedLeases);

impl Leases {
    /// Gives every lease back so that the other processes can take them at
    /// once. Returns `false` if Redis did not confirm in time (the leases
    /// then expire on their own).
    pub async fn release(self) -> bool {
        tokio::time::timeout(RELEASE_TIMEOUT, self.0.release_all())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn plan(flags: &[&str]) -> Result<Option<SharedPlan>, SharedError> {
        let mut argv = vec!["baler", "ingest"];
        argv.extend(flags);
        let Command::Ingest(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("parsed as ingest")
        };
        SharedPlan::from_args(&args)
    }

    #[test]
    fn without_shared_there_is_no_plan() {
        assert_eq!(plan(&["--capacity", "100"]).unwrap(), None);
    }

    #[test]
    fn the_default_factor_makes_ten_partitions_rounding_the_factor_up() {
        let p = plan(&["--capacity", "2005", "--shared", "redis://h:1"])
            .unwrap()
            .unwrap();
        assert_eq!(p.factor, 201);
        assert_eq!(p.shared.div_ceil(p.factor), 10);
    }

    #[test]
    fn the_name_is_the_table_unless_shared_name_is_given() {
        let flags = [
            "--capacity",
            "100",
            "--shared",
            "redis://h:1",
            "--table",
            "orders",
        ];
        assert_eq!(plan(&flags).unwrap().unwrap().name, "orders");
        let mut named = flags.to_vec();
        named.extend(["--shared-name", "orders-db"]);
        assert_eq!(plan(&named).unwrap().unwrap().name, "orders-db");
    }

    #[test]
    fn an_empty_shared_name_is_refused() {
        let err = plan(&[
            "--capacity",
            "100",
            "--shared",
            "redis://h:1",
            "--shared-name",
            "",
        ])
        .unwrap_err();
        assert!(matches!(err, SharedError::EmptyName), "{err}");
    }

    #[test]
    fn reserved_and_factor_are_taken_as_given() {
        let p = plan(&[
            "--capacity",
            "2000",
            "--shared",
            "redis://h:1",
            "--factor",
            "500",
            "--reserved",
            "50",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((p.shared, p.factor, p.reserved), (2000, 500, 50));
        assert!(
            p.describe().contains("4 partitions of 500/s"),
            "{}",
            p.describe()
        );
    }
}
