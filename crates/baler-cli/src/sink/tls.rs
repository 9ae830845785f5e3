//! TLS for the PostgreSQL sink: `sslmode` and `sslrootcert` of the `--sink`
//! URL, read as libpq reads them, over rustls.
//!
//! | `sslmode` | what baler does |
//! |---|---|
//! | `disable` | no TLS |
//! | `prefer` (the default) | TLS when the server offers it, plain otherwise; the certificate is not checked |
//! | `require` | TLS or no connection; the certificate is not checked, unless a root CA is given (then as `verify-ca`) |
//! | `verify-ca` | TLS, and the certificate must be signed by the root CA |
//! | `verify-full` | as `verify-ca`, and the certificate must name the host of the URL |
//!
//! The root CA is `sslrootcert=FILE` (PEM), `sslrootcert=system` (the
//! system's trust store; it makes `verify-full` the default, and weaker
//! modes an error, as in libpq 16), or else `~/.postgresql/root.crt` when it
//! exists. `sslmode=allow`, client certificates (`sslcert`, `sslkey`) and
//! libpq's `PG*` environment variables are not supported: each is refused or
//! ignored as said in its error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, all of it but `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it; the certificate is not checked.
    Prefer,
    /// TLS always; the certificate is not checked.
    Require,
    /// TLS, with a certificate signed by the root CA.
    VerifyCa,
    /// TLS, with a certificate signed by the root CA that names the host.
    VerifyFull,
}

impl TlsMode {
    /// The name of the mode in a URL.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to
    /// go on without it. The checks are the connector's.
    pub(crate) fn ssl_mode(self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }
}

/// How the sink's connections are secured.
#[derive(Clone)]
pub struct PostgresTls {
    /// The mode in force (`require` with a root CA is `verify-ca`).
    pub mode: TlsMode,
    /// The root CA file, if one is used.
    pub root_cert: Option<PathBuf>,
    pub(crate) connector: MakeRustlsConnect,
}

impl std::fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

/// Where the root CA comes from.
enum Roots {
    File(PathBuf),
    System,
}

/// Takes `sslmode`, `sslrootcert` (and the client-certificate options that
/// are refused) out of the query of `url`. Returns the URL without them,
/// for tokio-postgres, and the TLS settings.
///
/// # Errors
///
/// A sentence saying what to change.
/// [`split_url`] for libpq keywords (`host=… sslmode=require …`): the TLS
/// keywords are taken out and read as a URL's would be, the rest is kept for
/// `tokio_postgres` (whose own `sslmode` would otherwise be overridden).
pub(crate) fn split_keywords(text: &str) -> Result<(String, PostgresTls), String> {
    // libpq allows spaces around `=`; join them so that each pair is one word.
    let mut joined = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !joined.is_empty() && !joined.ends_with('=') && !word.starts_with('=') {
            joined.push(' ');
        }
        joined.push_str(word);
    }
    let (tls, kept): (Vec<&str>, Vec<&str>) = joined
        .split(' ')
        .partition(|pair| matches!(pair.split_once('='), Some((key, _)) if key.starts_with("ssl")));
    let (_, tls) = split_url(&format!("?{}", tls.join("&")))?;
    Ok((kept.join(" "), tls))
}

pub(crate) fn split_url(url: &str) -> Result<(String, PostgresTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = Some(match &*decode(value) {
                    "disable" => TlsMode::Disable,
                    "prefer" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    "allow" => {
                        return Err("sslmode=allow is not supported; use sslmode=prefer (TLS \
                                    when the server offers it) or sslmode=disable"
                            .into())
                    }
                    other => {
                        return Err(format!(
                            "sslmode={other} is not a TLS mode; use disable, prefer, require, \
                             verify-ca or verify-full"
                        ))
                    }
                });
            }
            "sslrootcert" => {
                root = Some(match &*decode(value) {
                    "" => return Err("sslrootcert= is empty; give the CA's PEM file".into()),
                    "system" => Roots::System,
                    path => Roots::File(PathBuf::from(path)),
                });
            }
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => {
                return Err(format!(
                    "{key}= is not supported: baler presents no client certificate and checks \
                     no revocation list; authenticate with a password or trust in pg_hba.conf"
                ));
            }
            _ => kept.push(pair),
        }
    }
    let system = matches!(root, Some(Roots::System));
    let mode = match (mode, system) {
        (None, true) => TlsMode::VerifyFull,
        (None, false) => TlsMode::Prefer,
        (Some(m), true) if m != TlsMode::VerifyFull => {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (it is the default with it), not \
                 sslmode={}: a public CA signs certificates for anyone's host, so only the \
                 host name check makes it safe",
                m.name()
            ))
        }
        (Some(m), _) => m,
    };
    let root = root.or_else(|| {
        // libpq's default root CA file.
        let home = std::env::var_os("HOME")?;
        let default = Path::new(&home).join(".postgresql").join("root.crt");
        default.is_file().then_some(Roots::File(default))
    });
    let mode = match (mode, &root) {
        (TlsMode::Require, Some(_)) => TlsMode::VerifyCa,
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
            return Err(format!(
                "sslmode={} checks the server's certificate against a root CA, and none is \
                 given; add sslrootcert=FILE (the PEM of the CA that signed the server's \
                 certificate), or sslrootcert=system for the system's CAs",
                mode.name()
            ))
        }
        (m, _) => m,
    };
    let roots = match (&root, mode) {
        (Some(root), TlsMode::VerifyCa | TlsMode::VerifyFull) => Some(load_roots(root)?),
        _ => None,
    };
    let connector = MakeRustlsConnect::new(client_config(mode, roots)?);
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let root_cert = match root {
        Some(Roots::File(path)) if roots_used(mode) => Some(path),
        _ => None,
    };
    Ok((
        url,
        PostgresTls {
            mode,
            root_cert,
            connector,
        },
    ))
}

fn roots_used(mode: TlsMode) -> bool {
    matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull)
}

/// `%XX` decoded, as tokio-postgres decodes the rest of the URL.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| {
                format!("sslrootcert={shown} cannot be read ({e}); give the CA's PEM file")
            })?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate.map_err(|e| {
                    format!("sslrootcert={shown} is not a PEM certificate file ({e})")
                })?;
                store.add(certificate).map_err(|e| {
                    format!("sslrootcert={shown} holds a certificate that is not a CA's ({e})")
                })?;
            }
            if store.is_empty() {
                return Err(format!(
                    "sslrootcert={shown} holds no certificate; give the PEM file \
                     (-----BEGIN CERTIFICATE-----) of the CA that signed the server's certificate"
                ));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("sslrootcert=system: the system's trust store holds no CA \
                            (on Debian, install ca-certificates); or give sslrootcert=FILE"
                    .into());
            }
        }
    }
    Ok(store)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: TlsMode, roots: Option<RootCertStore>) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS cannot be set up: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("the root CA cannot be used: {e}"))?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        None => Arc::new(Unchecked(provider)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name last, once the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root CA, as in libpq: the connection is
/// encrypted, and the server's certificate is not checked. The handshake's
/// signatures still are, so the session is with the certificate's key.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What to check when a connection failed in TLS, if it did.
pub(crate) fn handshake_hint(
    error: &(dyn std::error::Error + 'static),
    mode: TlsMode,
) -> Option<&'static str> {
    if crate::sink::error_chain(error).contains("server does not support TLS") {
        return Some(
            "the server does not offer TLS: turn ssl on in its postgresql.conf, or use \
             sslmode=prefer or sslmode=disable in --sink",
        );
    }
    let tls = rustls_error(error)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => {
            "the server's certificate is not signed by the root CA: give the CA that signed it \
             with sslrootcert=FILE in --sink (or sslrootcert=system for the system's CAs), or \
             use sslmode=require without sslrootcert to encrypt without checking the \
             certificate"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the server's certificate does not name the host of --sink: connect by a name or \
             address it lists (its subject alternative names), or use sslmode=verify-ca to check \
             the CA only"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => {
            "the server's certificate is outside its validity period: renew it, or check this \
             machine's clock"
        }
        _ if mode == TlsMode::Prefer => {
            "check the server's ssl settings, or use sslmode=disable if the network is trusted"
        }
        _ => "check the server's ssl settings and the sslmode and sslrootcert of --sink",
    })
}

/// The rustls error in `error`'s chain. An `io::Error` hides the error it
/// wraps from `source()`, so each link is also opened with `get_ref`.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut link = Some(error);
    while let Some(e) = link {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls);
            }
        }
        link = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> Result<(String, TlsMode), String> {
        split_url(url).map(|(url, tls)| (url, tls.mode))
    }

    #[test]
    fn sslmode_is_taken_out_of_the_url_and_the_rest_is_kept() {
        assert_eq!(
            split("postgres://u@h/db").unwrap(),
            ("postgres://u@h/db".into(), TlsMode::Prefer)
        );
        assert_eq!(
            split("postgres://u@h/db?application_name=x&sslmode=require").unwrap(),
            (
                "postgres://u@h/db?application_name=x".into(),
                TlsMode::Require
            )
        );
        assert_eq!(
            split("postgres://u@h/db?sslmode=disable").unwrap().1,
            TlsMode::Disable
        );
    }

    #[test]
    fn modes_libpq_has_and_baler_does_not_are_refused_saying_what_to_use() {
        let err = split("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(err.contains("sslmode=prefer"), "{err}");
        let err = split("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        let err = split("postgres://h/db?sslcert=c.pem").unwrap_err();
        assert!(err.contains("no client certificate"), "{err}");
    }

    #[test]
    fn verifying_without_a_root_ca_is_refused_naming_sslrootcert() {
        // Not the user's ~/.postgresql/root.crt, whatever this machine has.
        if let Some(home) = std::env::var_os("HOME") {
            if Path::new(&home).join(".postgresql/root.crt").exists() {
                return;
            }
        }
        for mode in ["verify-ca", "verify-full"] {
            let err = split(&format!("postgres://h/db?sslmode={mode}")).unwrap_err();
            assert!(err.contains("sslrootcert=FILE"), "{err}");
        }
    }

    #[test]
    fn system_roots_need_verify_full() {
        let err = split("postgres://h/db?sslmode=require&sslrootcert=system").unwrap_err();
        assert!(err.contains("sslmode=verify-full"), "{err}");
    }

    #[test]
    fn a_root_ca_file_that_is_missing_or_not_pem_is_named() {
        let err = split("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem cannot be read"), "{err}");
        let dir = std::env::temp_dir().join(format!("baler-cli-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let err = split(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            junk.display()
        ))
        .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn percent_escapes_in_values_are_decoded() {
        assert_eq!(decode("%2Ftmp%2Fca.pem"), "/tmp/ca.pem");
        assert_eq!(decode("a%zzb%"), "a%zzb%");
    }
}
