//! The one redis-server of a run, and the few commands the runner itself
//! sends (over a plain RESP connection, so that nothing of a client library
//! shows up in the counts).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Commands the runner sends, left out of the contenders' counts (as the
/// protocol says: INFO, CONFIG, FLUSHALL, PING).
const RUNNER_COMMANDS: [&str; 4] = ["info", "config", "flushall", "ping"];

/// A redis-server on a free loopback port, without persistence. Dropping it
/// kills the server by its pid, also when the runner fails.
pub(crate) struct RedisServer {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisServer {
    pub(crate) fn start(dir: &Path) -> Result<RedisServer, String> {
        Self::start_with(dir, &[])
    }

    /// A server with more command-line arguments (a cluster node's).
    pub(crate) fn start_with(dir: &Path, extra: &[&str]) -> Result<RedisServer, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?
            .port();
        let log = std::fs::File::create(dir.join("redis.log"))
            .map_err(|e| format!("cannot create the redis-server log: {e}"))?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log);
        crate::procs::die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            format!("cannot start redis-server ({e}): install it, for example with `apt-get install -y redis-server`")
        })?;
        let server = RedisServer {
            port,
            child,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = server.connect() {
                if conn.simple(&["PING"]).is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer on port {port} within 10 s; see {}",
                    server.dir.join("redis.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn connect(&self) -> Result<Conn, String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("cannot connect to redis-server on port {}: {e}", self.port))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone().map_err(|e| e.to_string())?),
            writer: stream,
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain RESP connection.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn send(&mut self, args: &[&str]) -> Result<(), String> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer
            .write_all(out.as_bytes())
            .map_err(|e| format!("{}: {e}", args.join(" ")))
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("reading Redis's answer: {e}"))?;
        if line.is_empty() {
            return Err("redis-server closed the connection".into());
        }
        Ok(line.trim_end_matches("\r\n").to_owned())
    }

    /// A command whose answer is a simple string.
    pub(crate) fn simple(&mut self, args: &[&str]) -> Result<String, String> {
        self.send(args)?;
        let line = self.line()?;
        match line.strip_prefix('+') {
            Some(s) => Ok(s.to_owned()),
            None => Err(format!("{}: Redis answered {line:?}", args.join(" "))),
        }
    }

    /// A command that answers OK.
    pub(crate) fn ok(&mut self, args: &[&str]) -> Result<(), String> {
        match self.simple(args)?.as_str() {
            "OK" => Ok(()),
            other => Err(format!("{}: Redis answered {other:?}", args.join(" "))),
        }
    }

    /// A command whose answer is a bulk string.
    pub(crate) fn bulk(&mut self, args: &[&str]) -> Result<String, String> {
        self.send(args)?;
        let line = self.line()?;
        let len: usize = line
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{}: Redis answered {line:?}", args.join(" ")))?;
        let mut body = vec![0; len + 2];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("reading Redis's answer: {e}"))?;
        body.truncate(len);
        String::from_utf8(body).map_err(|e| format!("{}: not UTF-8: {e}", args.join(" ")))
    }

    /// The calls counted since the last CONFIG RESETSTAT, the runner's own
    /// commands left out, and the commands with the most calls.
    pub(crate) fn commandstats(&mut self) -> Result<(u64, Vec<(String, u64)>), String> {
        Ok(count_calls(&self.bulk(&["INFO", "commandstats"])?))
    }
}

impl Conn {
    /// Redis's `used_memory`, in bytes.
    pub(crate) fn used_memory(&mut self) -> Result<u64, String> {
        let info = self.bulk(&["INFO", "memory"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| "INFO memory has no used_memory line".to_owned())
    }
}

/// Where a run's queue lives: one redis-server, or the masters of a Redis
/// Cluster that the runner made; and how many shards the queue has (told to
/// baler's contender; the other contenders have no shards).
pub(crate) struct Target {
    nodes: Vec<RedisServer>,
    cluster: bool,
    shards: u32,
}

impl Target {
    /// One redis-server, a queue of one shard.
    pub(crate) fn single(server: RedisServer) -> Target {
        Target {
            nodes: vec![server],
            cluster: false,
            shards: 1,
        }
    }

    /// A Redis Cluster of `masters` masters on free loopback ports (no
    /// replicas; slots split evenly by `redis-cli --cluster create`), and a
    /// queue of one shard per master.
    pub(crate) fn cluster(dir: &Path, masters: usize) -> Result<Target, String> {
        let mut nodes = Vec::new();
        for i in 0..masters {
            nodes.push(RedisServer::start_with(
                &dir.join(format!("node-{i}")),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )?);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.address());
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!("cannot run redis-cli ({e}): install it, for example with `apt-get install -y redis-tools`")
            })?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let ok = n
                    .connect()
                    .and_then(|mut c| c.bulk(&["CLUSTER", "INFO"]))
                    .is_ok_and(|info| info.contains("cluster_state:ok"));
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "the cluster was not ready within 20 s ({})",
                        n.url()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Target {
            nodes,
            cluster: true,
            shards: u32::try_from(masters).unwrap_or(u32::MAX),
        })
    }

    /// The URL of the first node: the only one of a single server.
    pub(crate) fn url(&self) -> String {
        self.nodes.first().map(RedisServer::url).unwrap_or_default()
    }

    /// What the contenders are told: `BQB_REDIS`, and for a cluster or a
    /// queue of several shards `BQB_CLUSTER` (every node's URL) and
    /// `BQB_SHARDS`.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("BQB_REDIS", self.url())];
        if self.cluster {
            let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
            env.push(("BQB_CLUSTER", urls.join(",")));
        }
        if self.shards > 1 {
            env.push(("BQB_SHARDS", self.shards.to_string()));
        }
        env
    }

    /// Empties every node and resets its counters.
    pub(crate) fn reset(&self) -> Result<(), String> {
        for n in &self.nodes {
            let mut conn = n.connect()?;
            conn.ok(&["FLUSHALL"])?;
            conn.ok(&["CONFIG", "RESETSTAT"])?;
        }
        Ok(())
    }

    /// [`Conn::commandstats`] summed over the nodes.
    pub(crate) fn commandstats(&self) -> Result<(u64, Vec<(String, u64)>), String> {
        let mut total = 0;
        let mut per: Vec<(String, u64)> = Vec::new();
        for n in &self.nodes {
            let (calls, top) = n.connect()?.commandstats()?;
            total += calls;
            for (name, c) in top {
                match per.iter_mut().find(|(m, _)| *m == name) {
                    Some((_, sum)) => *sum += c,
                    None => per.push((name, c)),
                }
            }
        }
        per.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok((total, per))
    }

    /// Redis's `used_memory`, summed over the nodes.
    pub(crate) fn used_memory(&self) -> Result<u64, String> {
        let mut total = 0;
        for n in &self.nodes {
            total += n.connect()?.used_memory()?;
        }
        Ok(total)
    }
}

/// Sums `calls=` over the lines of INFO commandstats, leaving out the
/// runner's own commands (and their subcommands, `config|resetstat`).
pub(crate) fn count_calls(info: &str) -> (u64, Vec<(String, u64)>) {
    let mut per: Vec<(String, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            let base = name.split('|').next().unwrap_or(name);
            (!RUNNER_COMMANDS.contains(&base)).then(|| (name.to_owned(), calls))
        })
        .collect();
    per.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    (per.iter().map(|(_, n)| n).sum(), per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runners_own_commands_are_left_out() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_xadd:calls=30,usec=5,usec_per_call=0.1,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_config|resetstat:calls=1,usec=5,usec_per_call=5,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_flushall:calls=1,usec=5,usec_per_call=5,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=2,usec=5,usec_per_call=5,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_ping:calls=4,usec=5,usec_per_call=5,rejected_calls=0,failed_calls=0\r\n";
        let (sum, per) = count_calls(info);
        assert_eq!(sum, 40);
        assert_eq!(per, vec![("xadd".into(), 30), ("evalsha".into(), 10)]);
    }
}
