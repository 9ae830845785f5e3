//! A certificate authority and a server certificate for 127.0.0.1 and
//! localhost, made for one test and written into its scratch directory.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files: `ca.crt`, and `server.crt` / `server.key` signed by it.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// A new CA (named `ca_name`) and a server certificate it signs, in `dir`.
    pub fn make(dir: &Path, ca_name: &str) -> Certs {
        Certs::make_for(dir, ca_name, &["127.0.0.1", "localhost"])
    }

    /// The same with a server certificate that names only `names`.
    pub fn make_for(dir: &Path, ca_name: &str, names: &[&str]) -> Certs {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{ca_name} test CA"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut server = CertificateParams::new(names).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "baler test server");
        let cert = server.signed_by(&key, &issuer).unwrap();

        let certs = Certs {
            ca: dir.join(format!("{ca_name}-ca.crt")),
            cert: dir.join(format!("{ca_name}-server.crt")),
            key: dir.join(format!("{ca_name}-server.key")),
        };
        std::fs::write(&certs.ca, ca_cert.pem()).unwrap();
        std::fs::write(&certs.cert, cert.pem()).unwrap();
        std::fs::write(&certs.key, key.serialize_pem()).unwrap();
        certs
    }

    /// Another CA, not the one that signed the server's certificate.
    pub fn stranger(dir: &Path) -> PathBuf {
        Certs::make(dir, "stranger").ca
    }
}
