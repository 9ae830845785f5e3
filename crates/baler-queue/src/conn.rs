//! One connection type for a single Redis and a Redis Cluster, so that
//! producers and workers run the same code on both.
//!
//! A [`Backend`] is what a queue was built for (a client for one server, or
//! one for a cluster); it hands out [`Conn`]s. The queue's shared connection
//! carries every non-blocking command; each blocking read (`XREADGROUP` or
//! `XREAD` with `BLOCK`) gets a connection of its own per shard, so that it
//! never holds up the commands queued behind it. On a cluster a connection
//! is a set of connections, one per node, so a blocking read on one shard's
//! node holds up nothing on the others either.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Arg, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use crate::scripts;

/// How a queue reaches Redis.
#[derive(Clone)]
pub(crate) enum Backend {
    /// One server.
    Single(Client),
    /// A Redis Cluster, reached through any of its nodes.
    Cluster(ClusterNodes),
}

/// What a cluster client is made from. A client is made per connection,
/// because the cluster client fixes the bound on a whole request (retries
/// included) when it is built: a client made for quick commands would cut
/// every blocking read short.
#[derive(Clone)]
pub(crate) struct ClusterNodes {
    /// The nodes' URLs, checked.
    pub(crate) urls: Vec<String>,
    /// PEM certificates of the CA(s) to trust instead of the system's
    /// (without the `tls` feature no builder takes one, and it stays unread).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) ca_pem: Option<Vec<u8>>,
}

impl ClusterNodes {
    /// A client whose every answer may take up to `answer`, and a whole
    /// request (retries and redirections included) twice that.
    pub(crate) fn client(
        &self,
        connect: Duration,
        answer: Duration,
    ) -> Result<ClusterClient, RedisError> {
        #[allow(unused_mut)]
        let mut builder = ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
            .connection_timeout(connect)
            .response_timeout(answer)
            .overall_response_timeout(Some(answer.saturating_mul(2)))
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(1000);
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.ca_pem {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            });
        }
        builder.build()
    }
}

impl Backend {
    /// A new connection whose every answer may take up to `answer`.
    pub(crate) async fn connect(
        &self,
        connect: Duration,
        answer: Duration,
    ) -> Result<Conn, RedisError> {
        match self {
            Backend::Single(client) => {
                ConnectionManager::new_with_config(client.clone(), manager_config(connect, answer))
                    .await
                    .map(Conn::Single)
            }
            Backend::Cluster(nodes) => nodes
                .client(connect, answer)?
                .get_async_connection()
                .await
                .map(Conn::Cluster),
        }
    }
}

fn manager_config(connect: Duration, answer: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(answer))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

/// A connection to a single Redis (reconnecting by itself) or to a Redis
/// Cluster (routing each command to the node that holds its keys, following
/// `MOVED` and `ASK`). Cheap to clone: clones share the connection.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs a command that names no key on the node that serves `slot`: on
    /// a single Redis, simply runs it. For commands about the node itself
    /// (`WAIT`, `WAITAOF`, `INFO`), which a cluster client would otherwise
    /// send to every master or to any node.
    pub(crate) async fn query_at_slot<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        slot: u16,
    ) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::new(slot, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = c.route_command(cmd.clone(), routing).await?;
                T::from_redis_value(value).map_err(RedisError::from)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            // A script missing from a node's cache is sent once in full with
            // EVAL (which caches it there), routed by its keys like the
            // EVALSHA was. The client's own fallback (SCRIPT LOAD, then
            // EVALSHA again) sends SCRIPT LOAD to every node and fails
            // while any one of them is down: every shard would lose its
            // scripts with one master.
            Conn::Cluster(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e) if e.code() == Some("NOSCRIPT") => match eval_instead(cmd) {
                        Some(eval) => c.req_packed_command(&eval).await,
                        None => Err(e),
                    },
                    answer => answer,
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// `EVALSHA <hash> …` of one of the queue's scripts as `EVAL <source> …`.
fn eval_instead(cmd: &Cmd) -> Option<Cmd> {
    let mut args = cmd.args_iter();
    let (Some(Arg::Simple(name)), Some(Arg::Simple(hash))) = (args.next(), args.next()) else {
        return None;
    };
    if !name.eq_ignore_ascii_case(b"EVALSHA") {
        return None;
    }
    let source = scripts::source_of(std::str::from_utf8(hash).ok()?)?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(source);
    for arg in args {
        match arg {
            Arg::Simple(a) => eval.arg(a),
            _ => return None,
        };
    }
    Some(eval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::ENQUEUE;

    #[test]
    fn a_missing_script_is_sent_in_full_with_the_same_keys_and_arguments() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(ENQUEUE.get_hash())
            .arg(2)
            .arg("{q}:jobs")
            .arg("{q}:sent:a")
            .arg(0)
            .arg("p");
        let eval = eval_instead(&evalsha).expect("one of the queue's scripts");
        let args: Vec<Vec<u8>> = eval
            .args_iter()
            .filter_map(|a| match a {
                Arg::Simple(a) => Some(a.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(args[0], b"EVAL");
        assert!(String::from_utf8_lossy(&args[1]).contains("XADD"));
        assert_eq!(
            args[2..],
            [
                b"2".to_vec(),
                b"{q}:jobs".to_vec(),
                b"{q}:sent:a".to_vec(),
                b"0".to_vec(),
                b"p".to_vec()
            ]
        );
        // Anything else is left alone.
        assert!(eval_instead(redis::cmd("GET").arg("k")).is_none());
        assert!(eval_instead(redis::cmd("EVALSHA").arg("0000").arg(0)).is_none());
    }
}
