//! Bootstrap tokens (`Authorization: Bearer abcdef.0123456789abcdef`), as
//! Kubernetes' bootstrap token authenticator reads them: the Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`
//! must hold the same secret, allow authentication, and not have expired.
//! The token then stands for `system:bootstrap:<id>` in
//! `system:bootstrappers` and the Secret's extra groups.

use base64::Engine;
use serde_json::Value;
use shoal_ca::{
    BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_SECRET_TYPE, BOOTSTRAPPERS_GROUP, BootstrapToken,
};

use super::Authenticator;
use crate::authz::User;

/// A Secret `data` value, decoded; `None` if missing or not base64 text.
fn data(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether `group` may be added by a token: `system:bootstrappers:` and
/// then `[a-z0-9:-]`, ending in `[a-z0-9]`, as Kubernetes checks it.
fn valid_extra_group(group: &str) -> bool {
    group
        .strip_prefix(BOOTSTRAPPERS_GROUP)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 256
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
                && rest
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl Authenticator {
    /// The user a bootstrap token stands for, or why it does not count
    /// (for the log only: the client gets a bare 401).
    pub(super) async fn verify_bootstrap(&self, token: &BootstrapToken) -> Result<User, String> {
        let name = token.secret_name();
        let what = format!(
            "bootstrap token {} (secrets {BOOTSTRAP_TOKEN_NAMESPACE}/{name})",
            token.id()
        );
        let secret = self
            .lookup("secrets", Some(BOOTSTRAP_TOKEN_NAMESPACE), &name)
            .await?
            .ok_or_else(|| format!("{what} does not exist"))?;
        if secret.get("type").and_then(Value::as_str) != Some(BOOTSTRAP_TOKEN_SECRET_TYPE) {
            return Err(format!(
                "{what} is not of type {BOOTSTRAP_TOKEN_SECRET_TYPE}"
            ));
        }
        if secret
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(format!("{what} is being deleted"));
        }
        if data(&secret, "token-id").as_deref() != Some(token.id()) {
            return Err(format!("{what} holds another token-id"));
        }
        if !data(&secret, "token-secret").is_some_and(|s| token.secret_matches(&s)) {
            return Err(format!("{what}: the secret does not match"));
        }
        if data(&secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
            return Err(format!(
                "{what} does not allow authentication (usage-bootstrap-authentication)"
            ));
        }
        if let Some(expiration) = data(&secret, "expiration") {
            let at: jiff::Timestamp = expiration
                .trim()
                .parse()
                .map_err(|e| format!("{what}: expiration {expiration:?} is not RFC 3339: {e}"))?;
            if jiff::Timestamp::now() >= at {
                return Err(format!("{what} expired at {expiration}"));
            }
        }
        let mut groups = vec![BOOTSTRAPPERS_GROUP.to_owned()];
        if let Some(extra) = data(&secret, "auth-extra-groups") {
            for group in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                if !valid_extra_group(group) {
                    return Err(format!(
                        "{what}: auth-extra-groups names {group:?}, which is not system:bootstrappers:<name>"
                    ));
                }
                groups.push(group.to_owned());
            }
        }
        Ok(User {
            name: shoal_ca::bootstrap_user(token.id()),
            groups,
        })
    }
}

#[cfg(test)]
#[test]
fn extra_groups_must_extend_the_bootstrappers_group() {
    assert!(valid_extra_group(
        "system:bootstrappers:kubeadm:default-node-token"
    ));
    assert!(valid_extra_group("system:bootstrappers:worker-1"));
    for bad in [
        "system:bootstrappers",
        "system:bootstrappers:",
        "system:masters",
        "system:bootstrappers:Upper",
        "system:bootstrappers:trailing-",
    ] {
        assert!(!valid_extra_group(bad), "{bad}");
    }
}
