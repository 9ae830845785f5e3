//! Where the blobs are and how requests prove who sends them: connection
//! strings, account keys and shared access signatures.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::token::TokenCache;

/// The account name of the local storage emulator's development account.
pub const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";

/// The well-known (public) key of the local storage emulator's development
/// account.
pub const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The blob endpoint of the local storage emulator's development account on
/// its default port.
pub const DEVELOPMENT_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Why an [`AzureLeaseStore`](crate::AzureLeaseStore) could not be made.
/// Messages never show an account key or a signature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureStoreError {
    /// A part of the connection string is not `Name=value`.
    #[error(
        "the connection string's part {part:?} is not Name=value; write it as \
         DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net \
         (or UseDevelopmentStorage=true for the local emulator)"
    )]
    MalformedConnectionString {
        /// The part, between semicolons.
        part: String,
    },
    /// A part the connection string needs is missing.
    #[error("the connection string has no {part}; {hint}")]
    MissingPart {
        /// The part's name.
        part: &'static str,
        /// What to add.
        hint: &'static str,
    },
    /// A part of the connection string has a value that cannot be used.
    #[error("the connection string's {part} is {value:?}; {hint}")]
    InvalidPart {
        /// The part's name.
        part: &'static str,
        /// The value given.
        value: String,
        /// What it should be.
        hint: &'static str,
    },
    /// The account key is not base64 (as the portal shows it).
    #[error(
        "the account key is not base64 ({reason}); copy it whole from the storage account's \
         access keys"
    )]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The blob endpoint is not an http or https URL.
    #[error(
        "the blob endpoint {endpoint:?} is not an http:// or https:// URL ({reason}); write it \
         as https://ACCOUNT.blob.core.windows.net, or http://127.0.0.1:10000/devstoreaccount1 \
         for the local emulator"
    )]
    InvalidEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The container name breaks the storage service's naming rules.
    #[error(
        "{name:?} cannot name a container: {reason}; use 3 to 63 lowercase letters, digits \
         and single hyphens, starting with a letter or a digit"
    )]
    InvalidContainer {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A bearer token was to go over plain HTTP.
    #[error(
        "the blob endpoint {endpoint:?} is plain http, and a Microsoft Entra ID bearer token is \
         sent only over https (anyone on the path could take it and use it as the identity); \
         write the endpoint as https://..."
    )]
    BearerOverHttp {
        /// The endpoint given.
        endpoint: String,
    },
    /// A certificate to trust is not PEM.
    #[error(
        "the certificates to trust are not usable: {reason}; give PEM text \
         (-----BEGIN CERTIFICATE-----) of the certificate authority that signed the endpoint's \
         certificate"
    )]
    InvalidCertificate {
        /// What is wrong with them.
        reason: String,
    },
    /// The HTTP client could not be made (its TLS configuration).
    #[error("the HTTP client cannot be made: {0}")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How requests are authorized.
#[derive(Clone)]
pub(crate) enum Auth {
    /// Shared Key: every request signed with the account key.
    SharedKey { account: String, key: Vec<u8> },
    /// A shared access signature appended to every URL (without its `?`).
    Sas(String),
    /// A Microsoft Entra ID bearer token on every request.
    Bearer(Arc<TokenCache>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::SharedKey { account, .. } => f
                .debug_struct("SharedKey")
                .field("account", account)
                .finish_non_exhaustive(),
            Auth::Sas(_) => f.write_str("Sas(..)"),
            Auth::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// A blob endpoint and the credentials to use it.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    /// The endpoint, without a trailing slash.
    pub(crate) endpoint: String,
    pub(crate) auth: Auth,
}

impl Account {
    pub(crate) fn shared_key(
        account: &str,
        key: &str,
        endpoint: &str,
    ) -> Result<Self, AzureStoreError> {
        if account.is_empty() {
            return Err(AzureStoreError::MissingPart {
                part: "AccountName",
                hint: "give the storage account's name",
            });
        }
        let key = STANDARD
            .decode(key.trim())
            .map_err(|e| AzureStoreError::InvalidKey {
                reason: e.to_string(),
            })?;
        if key.is_empty() {
            return Err(AzureStoreError::InvalidKey {
                reason: "it is empty".to_owned(),
            });
        }
        Ok(Account {
            endpoint: endpoint_of(endpoint)?,
            auth: Auth::SharedKey {
                account: account.to_owned(),
                key,
            },
        })
    }

    pub(crate) fn sas(endpoint: &str, signature: &str) -> Result<Self, AzureStoreError> {
        let signature = signature.trim().trim_start_matches('?');
        if signature.is_empty() {
            return Err(AzureStoreError::MissingPart {
                part: "SharedAccessSignature",
                hint: "give the signature's query string (sv=...&sig=...)",
            });
        }
        Ok(Account {
            endpoint: endpoint_of(endpoint)?,
            auth: Auth::Sas(signature.to_owned()),
        })
    }

    pub(crate) fn bearer(endpoint: &str, cache: TokenCache) -> Result<Self, AzureStoreError> {
        let checked = endpoint_of(endpoint)?;
        if !checked.starts_with("https://") {
            return Err(AzureStoreError::BearerOverHttp {
                endpoint: endpoint.to_owned(),
            });
        }
        Ok(Account {
            endpoint: checked,
            auth: Auth::Bearer(Arc::new(cache)),
        })
    }

    pub(crate) fn from_connection_string(text: &str) -> Result<Self, AzureStoreError> {
        let mut protocol = None;
        let mut account = None;
        let mut key = None;
        let mut endpoint = None;
        let mut suffix = None;
        let mut sas = None;
        let mut development = false;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(AzureStoreError::MalformedConnectionString {
                    part: part.to_owned(),
                });
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => protocol = Some(value),
                "accountname" => account = Some(value),
                "accountkey" => key = Some(value),
                "blobendpoint" => endpoint = Some(value.to_owned()),
                "endpointsuffix" => suffix = Some(value),
                "sharedaccesssignature" => sas = Some(value),
                "usedevelopmentstorage" => {
                    development = match value.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(AzureStoreError::InvalidPart {
                                part: "UseDevelopmentStorage",
                                value: value.to_owned(),
                                hint: "write true or false",
                            })
                        }
                    }
                }
                // Endpoints of the other services, and anything newer.
                _ => {}
            }
        }
        if development {
            return Account::shared_key(
                account.unwrap_or(DEVELOPMENT_ACCOUNT),
                key.unwrap_or(DEVELOPMENT_KEY),
                endpoint.as_deref().unwrap_or(DEVELOPMENT_ENDPOINT),
            );
        }
        let endpoint = match (endpoint, account) {
            (Some(endpoint), _) => endpoint,
            (None, Some(account)) if !account.is_empty() => {
                let protocol = protocol.unwrap_or("https");
                if protocol != "https" && protocol != "http" {
                    return Err(AzureStoreError::InvalidPart {
                        part: "DefaultEndpointsProtocol",
                        value: protocol.to_owned(),
                        hint: "write https (or http)",
                    });
                }
                let suffix = suffix.unwrap_or("core.windows.net");
                format!("{protocol}://{account}.blob.{suffix}")
            }
            _ => {
                return Err(AzureStoreError::MissingPart {
                    part: "AccountName",
                    hint: "give AccountName=... (or BlobEndpoint=...), or \
                           UseDevelopmentStorage=true for the local emulator",
                })
            }
        };
        match (key, sas) {
            (Some(key), _) => {
                let Some(account) = account else {
                    return Err(AzureStoreError::MissingPart {
                        part: "AccountName",
                        hint: "an AccountKey signs requests as its account: give AccountName=...",
                    });
                };
                Account::shared_key(account, key, &endpoint)
            }
            (None, Some(sas)) => Account::sas(&endpoint, sas),
            (None, None) => Err(AzureStoreError::MissingPart {
                part: "AccountKey",
                hint: "give AccountKey=... (or SharedAccessSignature=...)",
            }),
        }
    }
}

/// Checks a blob endpoint and drops its trailing slash.
fn endpoint_of(endpoint: &str) -> Result<String, AzureStoreError> {
    let invalid = |reason: &str| AzureStoreError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(endpoint.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(invalid("it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "it has a query or a fragment; give a signature as SharedAccessSignature",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Checks a container name against the storage service's rules.
pub(crate) fn check_container(name: &str) -> Result<(), AzureStoreError> {
    let invalid = |reason| {
        Err(AzureStoreError::InvalidContainer {
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() < 3 || name.len() > 63 {
        return invalid("it must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("it may hold only lowercase letters, digits and hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it must start and end with a letter or a digit");
    }
    if name.contains("--") {
        return invalid("it must not hold two hyphens in a row");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_connection_string_names_the_endpoint_and_the_key() {
        let a = Account::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(a.endpoint, "https://acme.blob.core.windows.net");
        assert!(
            matches!(a.auth, Auth::SharedKey { ref account, ref key } if account == "acme" && key == b"key")
        );
        let a = Account::from_connection_string(
            "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:4321/devstoreaccount1/;QueueEndpoint=http://127.0.0.1:4322/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(a.endpoint, "http://127.0.0.1:4321/devstoreaccount1");
    }

    #[test]
    fn development_storage_is_the_emulators_well_known_account() {
        let a = Account::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(a.endpoint, DEVELOPMENT_ENDPOINT);
        assert!(
            matches!(a.auth, Auth::SharedKey { ref account, .. } if account == DEVELOPMENT_ACCOUNT)
        );
    }

    #[test]
    fn a_signature_is_kept_without_its_question_mark() {
        let a = Account::from_connection_string(
            "BlobEndpoint=https://acme.blob.core.windows.net;SharedAccessSignature=?sv=2022-11-02&sig=abc",
        )
        .unwrap();
        assert!(matches!(a.auth, Auth::Sas(ref s) if s == "sv=2022-11-02&sig=abc"));
    }

    #[test]
    fn a_bad_connection_string_names_its_bad_part() {
        let e = Account::from_connection_string("AccountName=acme;oops").unwrap_err();
        assert!(
            matches!(e, AzureStoreError::MalformedConnectionString { ref part } if part == "oops"),
            "{e}"
        );
        let e = Account::from_connection_string("AccountName=acme").unwrap_err();
        assert!(
            matches!(
                e,
                AzureStoreError::MissingPart {
                    part: "AccountKey",
                    ..
                }
            ),
            "{e}"
        );
        let e = Account::from_connection_string("AccountKey=a2V5").unwrap_err();
        assert!(
            matches!(
                e,
                AzureStoreError::MissingPart {
                    part: "AccountName",
                    ..
                }
            ),
            "{e}"
        );
        let e =
            Account::from_connection_string("AccountName=acme;AccountKey=not base64!").unwrap_err();
        assert!(matches!(e, AzureStoreError::InvalidKey { .. }), "{e}");
        assert!(
            !e.to_string().contains("not base64!"),
            "the key is not shown: {e}"
        );
        let e = Account::from_connection_string(
            "AccountName=acme;AccountKey=a2V5;BlobEndpoint=ftp://x",
        )
        .unwrap_err();
        assert!(matches!(e, AzureStoreError::InvalidEndpoint { .. }), "{e}");
        let e = Account::from_connection_string("UseDevelopmentStorage=yes").unwrap_err();
        assert!(
            matches!(
                e,
                AzureStoreError::InvalidPart {
                    part: "UseDevelopmentStorage",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn container_names_follow_the_services_rules() {
        for good in ["abc", "orders-db", "a1-b2", &"x".repeat(63)] {
            assert!(check_container(good).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "Orders",
            "-abc",
            "abc-",
            "a--b",
            "a_b",
            &"x".repeat(64),
        ] {
            assert!(check_container(bad).is_err(), "{bad}");
        }
    }
}
