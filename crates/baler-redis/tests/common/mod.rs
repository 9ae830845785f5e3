//! A real `redis-server` on a free loopback port, started and stopped by the
//! test that owns it.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the certificate it serves, and the CA that signed it.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of a TLS server: made by the test (see `certs.rs`, kept
/// apart so that tests without TLS need no certificate crate).
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A directory of its own for this test, removed by the caller.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "baler-redis-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(free_port())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: scratch("server"),
            child: None,
            tls: None,
        };
        server.launch();
        server
    }

    /// A server that speaks TLS only (`--port 0 --tls-port PORT`), with the
    /// certificate that `make` writes into the directory it is given;
    /// clients need no certificate.
    pub fn start_tls(make: impl FnOnce(&std::path::Path) -> TlsFiles) -> Self {
        let dir = scratch("tls-server");
        let mut server = RedisServer {
            port: free_port(),
            tls: Some(make(&dir)),
            dir,
            child: None,
        };
        server.launch();
        server
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        let certs = self.tls.as_ref().expect("a TLS server");
        std::fs::read(&certs.ca).unwrap()
    }

    /// The directory of this server's files (and certificates).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Starts the server (again, on the same port) and waits until it answers.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(certs) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&certs.cert)
                .arg("--tls-key-file")
                .arg(&certs.key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it with \
                     `apt-get install -y redis-server`, or run ./scripts/test, which does"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited at start ({status}); its log is on stderr above");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers(&self) -> bool {
        if self.tls.is_some() {
            // A plain PING cannot be read back from a TLS port; that the
            // port accepts connections is enough, as clients retry.
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
