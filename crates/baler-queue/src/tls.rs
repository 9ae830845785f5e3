//! `rediss://`: the client for a queue's URL (with a private CA if one was
//! given), and TLS handshake failures told as which server and what to check.
//!
//! baler-redis has the same plumbing for its lease store. It is repeated here
//! rather than shared because the two crates are published apart and neither
//! should depend on the other (a queue needs no lease store), and a crate of
//! its own for some eighty lines would cost every user a third dependency;
//! the hints also name this crate's own setting (`QueueBuilder::with_ca`).

use redis::{Client, ConnectionAddr, RedisError};

use crate::error::ConnectError;

/// The client for `url`, trusting `ca_pem` (PEM certificates) instead of the
/// system's roots when it is given. Checks everything that needs no
/// connection.
pub(crate) fn client(url: &str, ca_pem: Option<&[u8]>) -> Result<Client, ConnectError> {
    let url_owned = || url.to_owned();
    let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
    if tls && !cfg!(feature = "tls") {
        return Err(ConnectError::TlsNotEnabled { url: url_owned() });
    }
    // The Redis client reads `#insecure` as "accept any certificate", which
    // would make TLS worthless against anyone on the path.
    if tls && url.ends_with("#insecure") {
        return Err(ConnectError::Insecure { url: url_owned() });
    }
    if tls {
        ensure_crypto_provider();
    }
    let client = Client::open(url).map_err(|source| ConnectError::InvalidUrl {
        url: url_owned(),
        source,
    })?;
    match ca_pem {
        None => Ok(client),
        Some(_) if !is_tls(&client) => Err(ConnectError::CaWithoutTls { url: url_owned() }),
        Some(ca_pem) => with_ca(url, client, ca_pem),
    }
}

fn is_tls(client: &Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    )
}

#[cfg(feature = "tls")]
fn with_ca(url: &str, client: Client, ca_pem: &[u8]) -> Result<Client, ConnectError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    let invalid = |reason: String| ConnectError::InvalidCa {
        url: url.to_owned(),
        reason,
    };
    // Checked here, where the error can say what is wrong with the file; the
    // Redis client would only fail at the first handshake, and vaguely.
    let certificates = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("it holds no PEM certificate".into()));
    }
    Client::build_with_tls(
        client.get_connection_info().clone(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.to_vec()),
        },
    )
    .map_err(|e| invalid(e.to_string()))
}

/// Without the feature no builder can be given a CA, and a `rediss://` URL
/// is refused before this is reached.
#[cfg(not(feature = "tls"))]
fn with_ca(url: &str, _: Client, _: &[u8]) -> Result<Client, ConnectError> {
    Err(ConnectError::TlsNotEnabled {
        url: url.to_owned(),
    })
}

/// The Redis client builds its TLS settings with rustls's default builder,
/// which panics when no process-wide crypto provider is installed and the
/// build has more than one provider (or none): ring is installed only when
/// nothing else was.
#[cfg(feature = "tls")]
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(not(feature = "tls"))]
fn ensure_crypto_provider() {}

/// The TLS failure in `error`, if `client` connects over TLS and connecting
/// failed in TLS.
#[cfg(feature = "tls")]
pub(crate) fn handshake_failure(client: &Client, error: &RedisError) -> Option<ConnectError> {
    use rustls::{CertificateError as Cert, Error as Tls};

    if !is_tls(client) {
        return None;
    }
    let server = client.get_connection_info().addr().to_string();
    let Some(tls) = rustls_error(error) else {
        // A plain Redis port reads the TLS hello as the start of a command
        // and waits for the rest of it: the handshake never ends.
        return error
            .is_timeout()
            .then_some(ConnectError::TlsNoAnswer { server });
    };
    let hint = match tls {
        Tls::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the server's certificate is not signed by a CA this process trusts: give the \
             CA's certificate to QueueBuilder::with_ca, or add it to the system's trust store"
        }
        Tls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host of the URL: connect by a name \
             or address that it lists (its subject alternative names), or have it re-issued \
             for this one"
        }
        Tls::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => "the server's certificate is outside its validity period: renew it, or check this machine's clock",
        // webpki's own error, which rustls carries as `Other`: matched by
        // name so as not to depend on webpki.
        Tls::InvalidCertificate(Cert::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            "the server's certificate is a (self-signed) CA certificate, which cannot serve \
             as a server's own: make a CA, have it sign a certificate for the server, and \
             trust the CA"
        }
        Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => {
            "the server did not answer in TLS: check that the port is Redis's tls-port \
             (rediss:// is for a TLS port, redis:// for a plain one)"
        }
        _ => {
            "check that the server serves TLS on that port, and that its certificate is \
             signed by a CA this process trusts and names the host of the URL"
        }
    };
    Some(ConnectError::TlsHandshake {
        server,
        reason: tls.to_string(),
        hint,
    })
}

#[cfg(not(feature = "tls"))]
pub(crate) fn handshake_failure(_: &Client, _: &RedisError) -> Option<ConnectError> {
    None
}

/// The rustls error somewhere in `error`'s chain. The Redis client keeps its
/// inner error as an `Arc<dyn Error>`, and an `io::Error` hides the error it
/// wraps from `source()` (it hands out that error's own source), so each
/// link is also opened by hand.
#[cfg(feature = "tls")]
fn rustls_error(error: &RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut link: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = link {
        let e = e.downcast_ref::<Shared>().map_or(e, |inner| &**inner);
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(tls) = e.downcast_ref::<rustls::Error>().or(wrapped) {
            return Some(tls);
        }
        link = e.source();
    }
    None
}
