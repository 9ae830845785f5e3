//! The Azure SDK's credentials (`azure_identity`'s managed identity,
//! workload identity, developer sign-ins) as a [`TokenProvider`].

use std::sync::Arc;
use std::time::SystemTime;

use azure_core::credentials::TokenCredential;

use crate::token::{AccessToken, TokenError, TokenFuture, TokenProvider};

/// An Azure SDK [`TokenCredential`] as the store's [`TokenProvider`]: pass
/// `azure_identity`'s `ManagedIdentityCredential`,
/// `WorkloadIdentityCredential`, `DeveloperToolsCredential` or any other.
///
/// The store keeps the tokens it gets and asks again before they expire, so
/// the credential's own caching is a second layer, not a requirement.
///
/// ```no_run
/// # async fn example(credential: std::sync::Arc<dyn azure_core::credentials::TokenCredential>)
/// #     -> Result<(), baler_azure::AzureStoreError> {
/// use baler_azure::{AzureCredential, AzureLeaseStore};
///
/// // let credential = azure_identity::ManagedIdentityCredential::new(None)?;
/// let store = AzureLeaseStore::with_token_provider(
///     "https://acme.blob.core.windows.net",
///     AzureCredential::new(credential),
///     "orders-db",
/// )?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AzureCredential(Arc<dyn TokenCredential>);

impl AzureCredential {
    /// The provider that asks `credential`.
    pub fn new(credential: Arc<dyn TokenCredential>) -> Self {
        AzureCredential(credential)
    }
}

impl TokenProvider for AzureCredential {
    fn token<'a>(&'a self, scope: &'a str) -> TokenFuture<'a> {
        Box::pin(async move {
            let token = self
                .0
                .get_token(&[scope], None)
                .await
                .map_err(|e| TokenError(Box::new(e)))?;
            Ok(AccessToken::new(
                token.token.secret(),
                SystemTime::from(token.expires_on),
            ))
        })
    }
}
