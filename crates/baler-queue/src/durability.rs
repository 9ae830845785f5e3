//! Durability: what an enqueued job must have reached before its producer
//! is answered.
//!
//! Redis answers a write once the server that took it has applied it in
//! memory. What happens to that write next depends on the server's
//! settings, and none of them makes a write safe by itself:
//!
//! | Redis setting | a write answered by Redis survives | it does not survive |
//! |---|---|---|
//! | no persistence (`save ""`, `appendonly no`) | nothing: a restart empties Redis | any restart |
//! | RDB snapshots (`save …`) | a restart, up to the last snapshot | the writes since that snapshot |
//! | `appendonly yes`, `appendfsync everysec` (Redis's default AOF) | a restart of Redis | a crash of the host (power, kernel): up to about a second of writes |
//! | `appendonly yes`, `appendfsync always` | a crash of the host: written and fsynced before the next command runs | the loss of the disk |
//! | replicas (`replicaof`) | the loss of the master, for writes a replica had copied when a failover promoted it | writes the master answered but had not yet sent: replication is asynchronous |
//!
//! [`Durability`] closes the last gap for the producer's writes: with
//! [`Replicated`](Durability::Replicated) the producer sends `WAIT` after each
//! batch and answers its callers only once that many replicas have the jobs;
//! with [`Persisted`](Durability::Persisted) it sends `WAITAOF` (Redis 7.2 or
//! newer), which waits until the master's append-only file, and that many
//! replicas' files, hold them (fsynced, with `appendfsync always` or
//! `everysec`). A batch that does not get there within the timeout is
//! answered with [`EnqueueError::NotDurable`](crate::EnqueueError::NotDurable):
//! the job *was* added and may run, but could be lost with its server.
//!
//! Neither makes Redis synchronous: a failover may still elect a replica
//! that did not acknowledge, and `WAIT` tells what was copied, not what a
//! new master will keep. They make the common failure, a master lost right
//! after answering, lose nothing the producer confirmed.
//!
//! Workers do not wait. A completion lost with its master is not a lost
//! result: the replica still holds the job as claimed, so it is reclaimed
//! once its lease runs out and run again, and its result is written then.
//! Jobs run at least once in any case.

use std::fmt;
use std::time::Duration;

/// What a producer's writes must reach before `enqueue` answers; see the
/// [module docs](self) for what each Redis setting promises. Set with
/// [`QueueBuilder::durability`](crate::QueueBuilder::durability).
///
/// ```
/// use std::time::Duration;
/// use baler_queue::Durability;
///
/// // Answer only once one replica has the jobs, waiting at most 100 ms.
/// let durability = Durability::Replicated {
///     replicas: 1,
///     timeout: Duration::from_millis(100),
/// };
/// # let _ = durability;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Answered once the Redis server that took the jobs has applied them
    /// (the default). What survives then is what the server's persistence
    /// and replication settings give.
    #[default]
    Applied,
    /// Answered once `replicas` replicas have copied the jobs (`WAIT`),
    /// waiting at most `timeout`.
    Replicated {
        /// How many replicas must have the jobs (at least 1).
        replicas: u32,
        /// How long to wait for them.
        timeout: Duration,
    },
    /// Answered once the master's append-only file, and that of `replicas`
    /// replicas, hold the jobs (`WAITAOF`, Redis 7.2 or newer, with
    /// `appendonly yes`), waiting at most `timeout`.
    Persisted {
        /// How many replicas must have written them too (0: the master alone).
        replicas: u32,
        /// How long to wait for them.
        timeout: Duration,
    },
}

impl Durability {
    /// The command that waits, or `None` for [`Durability::Applied`].
    pub(crate) fn wait_command(&self) -> Option<redis::Cmd> {
        match *self {
            Durability::Applied => None,
            Durability::Replicated { replicas, timeout } => {
                let mut cmd = redis::cmd("WAIT");
                cmd.arg(replicas).arg(millis(timeout));
                Some(cmd)
            }
            Durability::Persisted { replicas, timeout } => {
                let mut cmd = redis::cmd("WAITAOF");
                cmd.arg(1).arg(replicas).arg(millis(timeout));
                Some(cmd)
            }
        }
    }

    /// Reads the answer of [`wait_command`](Self::wait_command): `None` when
    /// every copy asked for was confirmed, or what was reached.
    pub(crate) fn shortfall(&self, answer: &redis::Value) -> Option<Reached> {
        use crate::queue::as_u64;
        match (*self, answer) {
            (Durability::Replicated { replicas, .. }, v) => {
                let got = as_u64(v).unwrap_or(0);
                (got < u64::from(replicas)).then_some(Reached {
                    local: None,
                    replicas: got,
                })
            }
            (Durability::Persisted { replicas, .. }, redis::Value::Array(a)) => {
                let local = a.first().and_then(as_u64).unwrap_or(0);
                let got = a.get(1).and_then(as_u64).unwrap_or(0);
                (local < 1 || got < u64::from(replicas)).then_some(Reached {
                    local: Some(local >= 1),
                    replicas: got,
                })
            }
            (Durability::Persisted { .. }, _) => Some(Reached {
                local: Some(false),
                replicas: 0,
            }),
            (Durability::Applied, _) => None,
        }
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        match *self {
            Durability::Applied => None,
            Durability::Replicated { timeout, .. } | Durability::Persisted { timeout, .. } => {
                Some(timeout)
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Applied => write!(f, "applied by the server"),
            Durability::Replicated { replicas, timeout } => {
                write!(f, "copied to {replicas} replica(s) within {timeout:?}")
            }
            Durability::Persisted { replicas, timeout } => write!(
                f,
                "in the append-only file of the master and of {replicas} replica(s) within {timeout:?}"
            ),
        }
    }
}

/// What a wait for durability reached, when it fell short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// With [`Durability::Persisted`]: whether the master's own append-only
    /// file had the jobs.
    pub local: Option<bool>,
    /// How many replicas confirmed.
    pub replicas: u64,
}

impl fmt::Display for Reached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local {
            Some(true) => write!(f, "the master's append-only file and ")?,
            Some(false) => write!(f, "not the master's append-only file, and ")?,
            None => {}
        }
        write!(f, "{} replica(s)", self.replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn a_wait_that_falls_short_says_what_it_reached() {
        let replicated = Durability::Replicated {
            replicas: 2,
            timeout: Duration::from_millis(50),
        };
        assert_eq!(replicated.shortfall(&Value::Int(2)), None);
        assert_eq!(
            replicated.shortfall(&Value::Int(1)),
            Some(Reached {
                local: None,
                replicas: 1
            })
        );
        let persisted = Durability::Persisted {
            replicas: 0,
            timeout: Duration::from_millis(50),
        };
        assert_eq!(
            persisted.shortfall(&Value::Array(vec![Value::Int(1), Value::Int(0)])),
            None
        );
        let short = persisted
            .shortfall(&Value::Array(vec![Value::Int(0), Value::Int(0)]))
            .unwrap();
        assert_eq!(
            short.to_string(),
            "not the master's append-only file, and 0 replica(s)"
        );
        assert!(Durability::Applied.wait_command().is_none());
    }
}
