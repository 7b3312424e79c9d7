//! The injection template: what the apiserver's mutating admission adds to
//! a pod that asks for the mesh. The sidecar is a native sidecar, an init
//! container with `restartPolicy: Always` placed first, so it starts before
//! the other init containers and the app, keeps running beside them and
//! stops after them; its startup probe on `/ready` holds the app back until
//! it has its workload certificate.
//!
//! | where | what |
//! |---|---|
//! | namespace label `shoal.io/inject=enabled` | every new pod of the namespace gets the sidecar |
//! | pod annotation `shoal.io/inject: "true"` / `"false"` | this pod does / does not, whatever its namespace says |
//! | pod annotation `shoal.io/mtls-mode: strict` | the sidecar refuses plaintext (`--mode strict`) |
//!
//! The pod's token reaches the sidecar through a projected volume of its
//! own ([`TOKEN_VOLUME`] at [`TOKEN_DIR`]), so it works with
//! `automountServiceAccountToken: false` too: a bound token for the API
//! server's audience (the mesh CA reviews it as the API would) and the
//! cluster CA (`kube-root-ca.crt`), which the mesh CA's serving
//! certificate chains to.

use serde_json::{Map, Value, json};

use crate::config::{ADMIN_PORT, INBOUND_PORT};

/// The namespace label and the pod annotation that ask for the sidecar.
pub const INJECT_KEY: &str = "shoal.io/inject";
/// The namespace label's value that turns injection on.
pub const NAMESPACE_ENABLED: &str = "enabled";
/// The pod annotation choosing permissive (default) or strict mTLS.
pub const MODE_ANNOTATION: &str = "shoal.io/mtls-mode";
/// The injected container's name.
pub const CONTAINER_NAME: &str = "shoal-sidecar";
/// The image the injected container runs: built from this tree by
/// `cargo xtask` (`sidecar_image.rs`) and imported into every node's store.
pub const IMAGE: &str = "shoal.io/sidecar:dev";
/// The projected volume holding the sidecar's token and CA bundle.
pub const TOKEN_VOLUME: &str = "shoal-mesh-token";
/// Where the sidecar finds them.
pub const TOKEN_DIR: &str = "/var/run/secrets/shoal.io/mesh";
/// The token's lifetime (the agent refreshes it at 80 %; the sidecar reads
/// it again at every renewal).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// What the template needs from the cluster.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The image (normally [`IMAGE`]).
    pub image: String,
    /// The mesh CA (`https://HOST:15012`), reachable from pods.
    pub ca_url: String,
    /// The audience of the projected token: the one the mesh CA's review
    /// (the API server's authenticator) accepts.
    pub token_audience: String,
}

/// Whether a new pod gets the sidecar: its annotation decides when it has
/// one, else its namespace's label. Host-network pods never do (the
/// sidecar's ports would be the node's).
pub fn wanted(pod: &Value, namespace_labels: Option<&Map<String, Value>>) -> bool {
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    let annotation = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(INJECT_KEY))
        .and_then(Value::as_str);
    match annotation {
        Some("true") => true,
        Some("false") => false,
        _ => {
            namespace_labels
                .and_then(|l| l.get(INJECT_KEY))
                .and_then(Value::as_str)
                == Some(NAMESPACE_ENABLED)
        }
    }
}

/// Adds the sidecar (first of the init containers) and its token volume to
/// `pod`, unless it already has a container of that name. Returns whether
/// it added them.
pub fn inject(pod: &mut Value, injection: &Injection) -> bool {
    let strict = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(MODE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("strict");
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return false;
    };
    let taken = ["initContainers", "containers"].iter().any(|key| {
        spec.get(*key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
    });
    if taken {
        return false;
    }
    let container = sidecar_container(injection, strict);
    match spec
        .entry("initContainers")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    {
        Some(inits) => inits.insert(0, container),
        None => return false,
    }
    if let Some(volumes) = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    {
        volumes.push(token_volume(&injection.token_audience));
    }
    true
}

/// The injected container.
pub fn sidecar_container(injection: &Injection, strict: bool) -> Value {
    let ready = json!({"httpGet": {"path": "/ready", "port": ADMIN_PORT}});
    let mut startup = ready.clone();
    // Up to two minutes for the first certificate (a node still pulling
    // the CA's address into its routes, a loaded control plane).
    startup["periodSeconds"] = json!(1);
    startup["failureThreshold"] = json!(120);
    let mut readiness = ready;
    readiness["periodSeconds"] = json!(5);
    json!({
        "name": CONTAINER_NAME,
        "image": injection.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "args": [
            "--ca-url", injection.ca_url,
            "--ca-cert", format!("{TOKEN_DIR}/ca.crt"),
            "--token-path", format!("{TOKEN_DIR}/token"),
            "--mode", if strict { "strict" } else { "permissive" },
        ],
        "ports": [
            {"name": "mesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "startupProbe": startup,
        "readinessProbe": readiness,
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    })
}

/// The projected volume with the sidecar's token and the cluster CA.
pub fn token_volume(audience: &str) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {
                    "audience": audience,
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    "path": "token",
                }},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ],
        },
    })
}

#[cfg(test)]
mod tests;
