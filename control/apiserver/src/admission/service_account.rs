//! The ServiceAccount admission plugin: a new pod runs as a service account
//! that exists (`default` unless it names one), takes its image pull
//! secrets when it has none, and, unless the pod or the account turns
//! automounting off, gets the `kube-api-access-<5 chars>` projected volume
//! (a bound token, the cluster CA, the namespace) mounted read-only at
//! [`TOKEN_MOUNT_PATH`] in every container and init container, as
//! kube-apiserver's plugin does.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{rest::object_key, status::ApiError, storage::Storage, watch_cache::WatchCache};

/// Where the token, CA and namespace files appear in containers.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the injected volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap the root CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Lifetime of the projected token: an hour plus the 7 seconds Kubernetes
/// adds so that a token's age tells it came from this volume.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The annotation of a static pod's mirror, which never gets a token.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// How often the default account is looked for before the pod is refused:
/// the service account controller makes it moments after the namespace.
/// Kubernetes tries 10 times; twice that rides out a loaded machine.
const DEFAULT_ACCOUNT_ATTEMPTS: u32 = 20;
/// Characters of generated name suffixes (Kubernetes' `rand.String`).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Admits a pod being created; `cache` and `storage` to look its service
/// account up in.
pub(crate) async fn admit_pod(
    cache: &WatchCache,
    storage: &Storage,
    pod: &mut Value,
) -> Result<(), ApiError> {
    if pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            MIRROR_ANNOTATION.replace('/', "~1")
        ))
        .is_some()
    {
        return Ok(());
    }
    let name = str_at(pod, "/metadata/name").to_owned();
    let ns = str_at(pod, "/metadata/namespace").to_owned();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let mut account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if account.is_empty() {
        account = "default".to_owned();
        spec.insert("serviceAccountName".into(), json!(account));
        spec.insert("serviceAccount".into(), json!(account));
    }
    let Some(sa) = lookup(cache, storage, &ns, &account).await? else {
        return Err(ApiError {
            details: Some(json!({"name": name, "kind": "pods"})),
            ..ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
            ))
        });
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    let no_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_pull_secrets
        && let Some(secrets) = sa
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
    {
        spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
    }
    if automount {
        mount_token(spec);
    }
    Ok(())
}

/// Adds the token volume, and its mount to every container without one at
/// [`TOKEN_MOUNT_PATH`]; an existing `kube-api-access-*` volume is reused.
fn mount_token(spec: &mut serde_json::Map<String, Value>) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_owned);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", random_suffix()));
    let mut needed = false;
    for key in ["initContainers", "containers"] {
        let containers = spec.get_mut(key).and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let has = mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH));
            if !has {
                mounts
                    .push(json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
                needed = true;
            }
        }
    }
    if existing.is_none() && needed {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(list) = volumes.as_array_mut() {
            list.push(token_volume(&volume));
        }
    }
}

/// The projected volume Kubernetes injects, with its defaults filled in.
pub fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// The service account `ns/name` from the watch cache, else from the store
/// (the cache may not show a just-created one yet); the default account is
/// waited for a little, as Kubernetes does.
async fn lookup(
    cache: &WatchCache,
    storage: &Storage,
    ns: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let kind = shoal_api::find_resource("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not served"))?;
    let key = object_key(kind, Some(ns), name);
    let cached = cache
        .get(kind)
        .and_then(|c| c.list(&key))
        .and_then(|(entries, _)| {
            entries.into_iter().find(|e| {
                str_at(&e.value, "/metadata/name") == name
                    && str_at(&e.value, "/metadata/namespace") == ns
            })
        });
    if let Some(entry) = cached {
        return Ok(Some(entry.value.clone()));
    }
    let attempts = if name == "default" {
        DEFAULT_ACCOUNT_ATTEMPTS
    } else {
        1
    };
    for attempt in 0..attempts {
        if attempt > 0 {
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100;
            tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
        }
        if let Some(stored) = storage.get(&key).await? {
            return Ok(Some(stored.value));
        }
    }
    Ok(None)
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(ALPHANUMS[usize::from(*b) % ALPHANUMS.len()]))
        .collect()
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> Value {
        let mut pod = json!({
            "metadata": {"name": "web", "namespace": "team"},
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "app", "image": "busybox"},
                    {"name": "own", "image": "busybox", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]},
                ],
            },
        });
        if let (Some(spec), Some(extra)) = (
            pod.get_mut("spec").and_then(Value::as_object_mut),
            extra.as_object(),
        ) {
            spec.extend(extra.clone());
        }
        pod
    }

    #[test]
    fn every_container_without_its_own_mount_gets_the_token_volume() {
        let mut p = pod(json!({}));
        let spec = p.get_mut("spec").and_then(Value::as_object_mut);
        mount_token(spec.expect("spec"));
        let volumes = p["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        assert_eq!(volumes.len(), 1);
        let name = volumes[0]["name"].as_str().unwrap_or("").to_owned();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(volumes[0], token_volume(&name));
        let mount = json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(
            p["spec"]["initContainers"][0]["volumeMounts"],
            json!([mount])
        );
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(
            p["spec"]["containers"][1]["volumeMounts"],
            json!([{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]),
            "a container's own mount at the path is kept"
        );
    }

    #[test]
    fn an_existing_token_volume_is_reused() {
        let mut p = pod(json!({"volumes": [token_volume("kube-api-access-abcde")]}));
        mount_token(
            p.get_mut("spec")
                .and_then(Value::as_object_mut)
                .expect("spec"),
        );
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
    }
}
