//! Who a token proves the caller to be. The mesh CA asks the API server's
//! own token authenticator (TokenReview semantics: signature, issuer,
//! audience, expiry, and the service account and the pod the token is bound
//! to still existing with the token's uids), never the request.

/// A service account a token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Reviews a bearer token as the API server would authenticate it.
#[async_trait::async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// The service account `token` authenticates as, or why it does not.
    async fn review(&self, token: &str) -> Result<ServiceAccount, String>;
}

/// The service account of a Kubernetes user name
/// `system:serviceaccount:<namespace>:<name>` (what a TokenReview answers
/// for a service-account token); `None` for any other user.
pub fn service_account_from_user(user: &str) -> Option<ServiceAccount> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some(ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}
