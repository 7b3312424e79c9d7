//! Who is asking: the client certificate the TLS handshake verified or,
//! without one, a service-account token (`Authorization: Bearer <jwt>`)
//! signed with the cluster's key whose service account (and the pod, secret
//! or node it is bound to) still exists with the uid the token names; a
//! legacy token counts while the Secret it names still holds it. Also
//! issues those tokens (`TokenRequest`, in [`token_request`]).

mod bootstrap_token;
mod token_request;

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, header};
use serde_json::Value;
use shoal_ca::{LegacyClaims, ObjectRef, TokenSigner, Verified};

use crate::{
    authz::User, rest::object_key, status::ApiError, storage::Storage, watch_cache::WatchCache,
};

pub use token_request::is_token_request;

#[cfg(test)]
mod tests;

/// Turns a request's credentials into a user, and issues service-account
/// tokens.
pub struct Authenticator {
    signer: TokenSigner,
    storage: Storage,
    cache: Arc<WatchCache>,
}

impl Authenticator {
    /// An authenticator verifying (and signing) with `signer`, looking the
    /// objects tokens name up in `cache`, or in `storage` when the cache
    /// does not have them yet.
    pub fn new(signer: TokenSigner, storage: Storage, cache: Arc<WatchCache>) -> Self {
        Self {
            signer,
            storage,
            cache,
        }
    }

    /// The user a request authenticates as: the certificate's user if the
    /// client presented one, else a bearer token's; `None` without either.
    /// A token that does not verify is a 401, as Kubernetes answers it
    /// (the reason only goes to the log).
    pub async fn authenticate(
        &self,
        cert: Option<&User>,
        headers: &HeaderMap,
    ) -> Result<Option<User>, ApiError> {
        if let Some(user) = cert {
            return Ok(Some(user.clone()));
        }
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        if let Ok(bootstrap) = shoal_ca::BootstrapToken::parse(token) {
            return match self.verify_bootstrap(&bootstrap).await {
                Ok(user) => Ok(Some(user)),
                Err(reason) => {
                    tracing::info!(%reason, "rejected a bootstrap token");
                    Err(ApiError::unauthorized())
                }
            };
        }
        match self.verify(token).await {
            Ok(user) => Ok(Some(user)),
            Err(reason) => {
                tracing::info!(%reason, "rejected a bearer token");
                Err(ApiError::unauthorized())
            }
        }
    }

    /// A TokenReview of a service-account token: the user it authenticates
    /// as (`system:serviceaccount:<ns>:<name>`), by the same checks as a
    /// request's bearer token, or why it does not count. Bootstrap tokens
    /// are not service accounts and never pass.
    pub async fn review_service_account(&self, token: &str) -> Result<User, String> {
        if shoal_ca::BootstrapToken::parse(token).is_ok() {
            return Err("a bootstrap token is not a service-account token".to_owned());
        }
        self.verify(token).await
    }

    /// The service account a token stands for, or why it does not count.
    async fn verify(&self, token: &str) -> Result<User, String> {
        let claims = match self.signer.verify_any(token).map_err(|e| e.to_string())? {
            Verified::Bound(claims) => claims,
            Verified::Legacy(legacy) => return self.verify_legacy(token, legacy).await,
        };
        let k8s = &claims.kubernetes;
        let ns = Some(k8s.namespace.as_str());
        self.check_live("serviceaccounts", ns, &k8s.serviceaccount)
            .await?;
        if let Some(pod) = &k8s.pod {
            self.check_live("pods", ns, pod).await?;
        }
        if let Some(secret) = &k8s.secret {
            self.check_live("secrets", ns, secret).await?;
        }
        if let Some(node) = &k8s.node {
            self.check_live("nodes", None, node).await?;
        }
        let id = claims.identity();
        Ok(User {
            name: id.user,
            groups: id.groups,
        })
    }

    /// A legacy token counts while its service account exists with the uid
    /// it names and its Secret (not being deleted) still holds exactly this
    /// token, as Kubernetes' legacy token authenticator decides.
    async fn verify_legacy(&self, token: &str, claims: LegacyClaims) -> Result<User, String> {
        let ns = Some(claims.namespace.as_str());
        self.check_live(
            "serviceaccounts",
            ns,
            &ObjectRef {
                name: claims.service_account_name.clone(),
                uid: claims.service_account_uid.clone(),
            },
        )
        .await?;
        let what = format!("secrets {}/{}", claims.namespace, claims.secret_name);
        let secret = self
            .lookup("secrets", ns, &claims.secret_name)
            .await?
            .ok_or_else(|| format!("{what} holding the legacy token no longer exists"))?;
        if secret
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(format!("{what} holding the legacy token is being deleted"));
        }
        let held = secret
            .pointer("/data/token")
            .and_then(Value::as_str)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .unwrap_or_default();
        if held != token.trim().as_bytes() {
            return Err(format!("{what} no longer holds this token"));
        }
        let id = claims.identity();
        Ok(User {
            name: id.user,
            groups: id.groups,
        })
    }

    /// Checks that the object a token names exists with the token's uid
    /// and (but for a pod in its grace period) is not being deleted.
    async fn check_live(
        &self,
        plural: &str,
        ns: Option<&str>,
        named: &ObjectRef,
    ) -> Result<(), String> {
        let what = match ns {
            Some(ns) => format!("{plural} {ns}/{}", named.name),
            None => format!("{plural} {}", named.name),
        };
        let obj = self
            .lookup(plural, ns, &named.name)
            .await?
            .ok_or_else(|| format!("{what} named by the token no longer exists"))?;
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if uid != named.uid {
            return Err(format!(
                "{what} has uid {uid}, the token names {}: it was deleted and recreated",
                named.uid
            ));
        }
        let deleting = obj
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        if deleting && plural != "pods" {
            return Err(format!("{what} named by the token is being deleted"));
        }
        Ok(())
    }

    /// A core object, from the cache if it has it, else from the store.
    async fn lookup(
        &self,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, String> {
        let kind = shoal_api::find_resource("", "v1", plural)
            .ok_or_else(|| format!("{plural} are not served"))?;
        let key = object_key(kind, ns, name);
        let cached = self
            .cache
            .get(kind)
            .and_then(|c| c.list(&key))
            .and_then(|(entries, _)| {
                entries.into_iter().find(|e| {
                    e.value.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                        && e.value
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            == ns
                })
            });
        if let Some(entry) = cached {
            return Ok(Some(entry.value.clone()));
        }
        self.storage
            .get(&key)
            .await
            .map(|s| s.map(|s| s.value))
            .map_err(|e| format!("looking up {key}: {e}"))
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
