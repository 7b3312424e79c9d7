//! `certificates.k8s.io/v1` CertificateSigningRequests: the requester's
//! identity stamped into `spec` at create, the request checked, `spec`
//! kept as created, and `/approval` that moves only the conditions, as
//! Kubernetes' CSR registry strategies do.

use base64::Engine;
use serde_json::{Map, Value, json};
use shoal_api::Kind;

use crate::{authz::User, rest::now, status::ApiError};

/// The API group.
pub const GROUP: &str = "certificates.k8s.io";
/// The resource.
pub const RESOURCE: &str = "certificatesigningrequests";
/// The group every authenticated user is in.
const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The shortest certificate a request may ask for (`spec.expirationSeconds`).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The condition types Kubernetes knows.
const CONDITION_TYPES: &[&str] = &["Approved", "Denied", "Failed"];

/// Whether `kind` is the CertificateSigningRequest.
pub fn is_csr(kind: &Kind) -> bool {
    kind.group == GROUP && kind.plural == RESOURCE
}

/// The body of a create with `spec.username`, `groups`, `uid` and `extra`
/// set to who is asking, whatever the client wrote there (Kubernetes'
/// `PrepareForCreate`), and no status.
pub fn stamp_requester(mut obj: Value, user: &User) -> Result<Vec<u8>, ApiError> {
    check_node_renewal(&obj, user)?;
    let mut groups = user.groups.clone();
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "a CertificateSigningRequest must be a JSON object",
        ));
    };
    let spec = map
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(spec) = spec.as_object_mut() {
        spec.insert("username".into(), json!(user.name));
        spec.insert("groups".into(), json!(groups));
        spec.remove("uid");
        spec.remove("extra");
    }
    map.remove("status");
    serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))
}

/// A node (`system:node:<name>` in `system:nodes`) asking for a node
/// client certificate may ask only for its own name: renewing another
/// node's identity is 403 Forbidden, naming both.
fn check_node_renewal(obj: &Value, user: &User) -> Result<(), ApiError> {
    let is_node = user.name.starts_with("system:node:")
        && user.groups.iter().any(|g| g == shoal_ca::NODES_GROUP);
    if !is_node
        || obj.pointer("/spec/signerName").and_then(Value::as_str)
            != Some(shoal_ca::KUBELET_CLIENT_SIGNER)
    {
        return Ok(());
    }
    let requested = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pem| shoal_ca::CertificateRequest::from_pem(&pem).ok())
        .and_then(|req| req.common_name());
    match requested {
        // A request that does not parse is refused by admission as invalid.
        None => Ok(()),
        Some(cn) if cn == user.name => Ok(()),
        Some(cn) => Err(ApiError::forbidden(format!(
            "certificatesigningrequests.certificates.k8s.io is forbidden: node {:?} may only request a {} certificate for itself, not for {cn:?}",
            user.name,
            shoal_ca::KUBELET_CLIENT_SIGNER
        ))),
    }
}

/// Admission for CSRs: on create the request must be a PEM request whose
/// signature verifies, with a signer and usages; on update `spec` stays
/// as created, conditions get their timestamps, and an Approved or Denied
/// condition can be neither removed nor joined by the other.
pub fn admit(obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut errors: Vec<(String, &'static str, String)> = Vec::new();
    match old {
        None => check_spec(obj, &mut errors),
        Some(old) => {
            if let Some(spec) = old.get("spec") {
                obj["spec"] = spec.clone();
            }
        }
    }
    stamp_condition_times(obj);
    check_conditions(obj, old, &mut errors);
    if errors.is_empty() {
        return Ok(());
    }
    let causes = errors
        .iter()
        .map(|(field, reason, message)| json!({"reason": reason, "message": message, "field": field}))
        .collect();
    let summary: Vec<String> = errors
        .iter()
        .map(|(field, _, message)| format!("{field}: {message}"))
        .collect();
    Err(ApiError::invalid(
        GROUP,
        "CertificateSigningRequest",
        &name,
        format!(
            "CertificateSigningRequest.certificates.k8s.io \"{name}\" is invalid: {}",
            summary.join(", ")
        ),
        causes,
    ))
}

fn check_spec(obj: &Value, errors: &mut Vec<(String, &'static str, String)>) {
    let mut fail = |field: &str, reason: &'static str, message: String| {
        errors.push((field.to_owned(), reason, message));
    };
    match obj.pointer("/spec/request").and_then(Value::as_str) {
        None | Some("") => fail(
            "spec.request",
            "FieldValueRequired",
            "Required value".into(),
        ),
        Some(b64) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match pem.map(|p| shoal_ca::CertificateRequest::from_pem(&p)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => fail(
                    "spec.request",
                    "FieldValueInvalid",
                    format!("Invalid value: []byte{{...}}: {e}"),
                ),
                None => fail(
                    "spec.request",
                    "FieldValueInvalid",
                    "Invalid value: []byte{...}: not base64 of a PEM certificate request".into(),
                ),
            }
        }
    }
    if obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        fail(
            "spec.signerName",
            "FieldValueRequired",
            "Required value".into(),
        );
    }
    if obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        fail("spec.usages", "FieldValueRequired", "Required value".into());
    }
    if let Some(secs) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        && secs < MIN_EXPIRATION_SECONDS
    {
        fail(
            "spec.expirationSeconds",
            "FieldValueInvalid",
            format!("Invalid value: {secs}: may not specify a duration less than 10m0s"),
        );
    }
}

/// Fills `lastUpdateTime` and `lastTransitionTime` of conditions that lack
/// them, as the approval strategy does.
fn stamp_condition_times(obj: &mut Value) {
    let Some(conditions) = obj
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let now = now();
    for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
        for field in ["lastUpdateTime", "lastTransitionTime"] {
            if c.get(field).is_none_or(Value::is_null) {
                c.insert(field.into(), json!(now));
            }
        }
        if c.get("status").is_none_or(Value::is_null) {
            c.insert("status".into(), json!("True"));
        }
    }
}

fn condition_types(obj: &Value) -> Vec<String> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("status").and_then(Value::as_str) != Some("False"))
        .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn check_conditions(
    obj: &Value,
    old: Option<&Value>,
    errors: &mut Vec<(String, &'static str, String)>,
) {
    let types = condition_types(obj);
    for (i, ty) in types.iter().enumerate() {
        if !CONDITION_TYPES.contains(&ty.as_str()) {
            errors.push((
                format!("status.conditions[{i}].type"),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: \"{ty}\": supported values: \"Approved\", \"Denied\", \"Failed\""
                ),
            ));
        }
    }
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("Approved") && has("Denied") {
        errors.push((
            "status.conditions".into(),
            "FieldValueInvalid",
            "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive"
                .into(),
        ));
    }
    if let Some(old) = old {
        for ty in ["Approved", "Denied"] {
            if condition_types(old).iter().any(|t| t == ty) && !has(ty) {
                errors.push((
                    "status.conditions".into(),
                    "FieldValueForbidden",
                    format!("Forbidden: updates may not remove a condition of type \"{ty}\""),
                ));
            }
        }
    }
}

/// The object an `/approval` update writes: the live object with the
/// conditions the client sent; everything else stays.
pub fn approval_update(old: &Value, new: &Value) -> Value {
    let mut obj = old.clone();
    let conditions = new
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or_else(|| json!([]));
    match obj.get_mut("status").and_then(Value::as_object_mut) {
        Some(status) => {
            status.insert("conditions".into(), conditions);
        }
        None => obj["status"] = json!({"conditions": conditions}),
    }
    obj
}

#[cfg(test)]
mod tests;
