//! A real Azurite (the storage emulator) on a free loopback port, started and
//! stopped by the test that owns it.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baler_azure::{DEVELOPMENT_ACCOUNT, DEVELOPMENT_KEY};

/// The certificate maker the Redis lease store's TLS tests use, shared.
#[path = "../../../baler-redis/tests/common/certs.rs"]
pub mod certs;

pub struct Azurite {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// In OAuth mode: HTTPS with this certificate authority's server
    /// certificate, and bearer tokens checked.
    pub certs: Option<certs::Certs>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A directory of its own for this test, removed by the caller.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "baler-azure-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `azurite-blob` to run: `$BALER_AZURITE`, or the one `./scripts/test`
/// installs into `target/tools/azurite`. Never skipped: a missing one fails
/// the test and says how to install it.
pub fn azurite_blob() -> PathBuf {
    if let Some(path) = std::env::var_os("BALER_AZURITE") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "BALER_AZURITE is {path:?}, which does not exist; point it at an azurite-blob, \
             or unset it and run ./scripts/test, which installs Azurite"
        );
        return path;
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/tools/azurite/node_modules/.bin/azurite-blob");
    assert!(
        local.exists(),
        "Azurite is not installed: run ./scripts/test (or `./scripts/test setup`), which installs \
         it into target/tools/azurite, or set BALER_AZURITE to an azurite-blob"
    );
    local
}

impl Azurite {
    pub fn start() -> Self {
        let mut server = Azurite {
            port: free_port(),
            dir: scratch("azurite"),
            child: None,
            certs: None,
        };
        server.launch();
        server
    }

    /// A server that accepts only HTTPS, with a certificate signed by a CA
    /// made for it, and checks bearer tokens (`--oauth basic`: a token's
    /// audience, issuer and lifetime, not its signature).
    pub fn start_oauth() -> Self {
        let dir = scratch("azurite-oauth");
        let mut server = Azurite {
            port: free_port(),
            certs: Some(certs::Certs::make(&dir, "azurite")),
            dir,
            child: None,
        };
        server.launch();
        server
    }

    /// The HTTPS blob endpoint of the development account on this server.
    pub fn https_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/{DEVELOPMENT_ACCOUNT}", self.port)
    }

    /// The PEM of the CA that signed this server's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.certs.as_ref().expect("an OAuth server").ca).unwrap()
    }

    /// The connection string of the development account on this server.
    pub fn connection_string(&self) -> String {
        connection_string(self.port)
    }

    /// Starts the server (again, on the same port, empty) and waits until it
    /// answers.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(azurite_blob());
        if let Some(certs) = &self.certs {
            command
                .args(["--oauth", "basic", "--cert"])
                .arg(&certs.cert)
                .arg("--key")
                .arg(&certs.key);
        }
        let child = command
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            // In memory: a restart is an empty service, as after a crash.
            .current_dir(&self.dir)
            .args([
                "--silent",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--inMemoryPersistence",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start Azurite ({e}): is Node.js installed? ./scripts/test installs it"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let stderr = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
                panic!("Azurite exited at once with {status}: {stderr}");
            }
            assert!(Instant::now() < deadline, "Azurite did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it answers HTTP (or, over HTTPS, accepts connections).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.certs.is_some() {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 5];
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"HTTP/"
    }

    /// Kills the server at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The development account's connection string for a server on `port`.
pub fn connection_string(port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEVELOPMENT_ACCOUNT};\
         AccountKey={DEVELOPMENT_KEY};BlobEndpoint=http://127.0.0.1:{port}/{DEVELOPMENT_ACCOUNT};"
    )
}
