//! TLS for `rediss://`: the crypto provider, and handshake failures told in
//! words a user can act on.

use redis::{Client, RedisError};

use crate::RedisStoreError;

/// Makes sure rustls has a process-wide crypto provider. The Redis client
/// builds its TLS configuration with rustls's default builder, which panics
/// when none is installed and the build enables more than one provider (or
/// none): ring is installed only when nothing else was.
#[cfg(feature = "tls")]
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(not(feature = "tls"))]
pub(crate) fn ensure_crypto_provider() {}

/// The handshake failure in `error`, if connecting over TLS failed in TLS.
#[cfg(feature = "tls")]
pub(crate) fn handshake_failure(client: &Client, error: &RedisError) -> Option<RedisStoreError> {
    use rustls::{CertificateError, Error};

    let addr = client.get_connection_info().addr();
    if !matches!(addr, redis::ConnectionAddr::TcpTls { .. }) {
        return None;
    }
    let Some(tls) = rustls_error(error) else {
        // A plain Redis port reads the TLS hello as the start of a command
        // and waits for its end: the handshake never completes.
        return error.is_timeout().then(|| RedisStoreError::TlsNoAnswer {
            server: addr.to_string(),
        });
    };
    let hint = match tls {
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => {
            "the server's certificate is not signed by a CA this process trusts: give the CA's \
             certificate (RedisLeaseStore::with_ca; baler ingest --shared-ca FILE), or add it to \
             the system's trust store"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the server's certificate does not name the host of the URL: connect by a name or \
             address that the certificate lists (its subject alternative names), or have it \
             re-issued for this one"
        }
        Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => {
            "the server's certificate is outside its validity period: renew it, or check this \
             machine's clock"
        }
        // webpki's own error, which rustls carries as `Other`: matched by
        // name so as not to depend on webpki's error type.
        Error::InvalidCertificate(CertificateError::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            "the server's certificate is a CA certificate (self-signed), which cannot serve as \
             a server's own: make a CA, have it sign a certificate for the server, and trust \
             the CA"
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "the server did not answer in TLS: check that the port is Redis's tls-port \
             (rediss:// is for a TLS port, redis:// for a plain one)"
        }
        _ => {
            "check that the server serves TLS on that port and that its certificate is signed by \
             a CA this process trusts and names the host of the URL"
        }
    };
    Some(RedisStoreError::TlsHandshake {
        server: addr.to_string(),
        reason: tls.to_string(),
        hint,
    })
}

#[cfg(not(feature = "tls"))]
pub(crate) fn handshake_failure(_: &Client, _: &RedisError) -> Option<RedisStoreError> {
    None
}

/// The rustls error somewhere in `error`'s chain. An `io::Error` hides the
/// error it wraps from `source()` (it returns that error's own source), so
/// each link is also opened with `get_ref`.
#[cfg(feature = "tls")]
fn rustls_error(error: &RedisError) -> Option<&rustls::Error> {
    let mut link: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = link {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // The Redis client keeps its inner error as an `Arc<dyn Error>`,
        // which is what `source()` hands out.
        let e = match e.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>() {
            Some(inner) => &**inner,
            None => e,
        };
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
