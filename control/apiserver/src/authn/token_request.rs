//! `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`: a
//! `TokenRequest` (authentication.k8s.io/v1) for an existing service
//! account, answered with a signed token, as `kubectl create token` asks
//! for it. kubectl sends the request as protobuf, so that one message is
//! read in either encoding.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_ca::{Claims, ObjectRef, SERVICE_ACCOUNT_ISSUER};

use super::Authenticator;
use crate::{
    body::Reply,
    request::{ResourceRequest, Verb},
    rest::{Body, decode_body, object_key},
    status::ApiError,
};

/// Lifetime of a token whose request names none, as Kubernetes defaults it.
const DEFAULT_EXPIRATION_SECS: i64 = 3600;
/// Shortest lifetime a request may ask for: ten minutes.
const MIN_EXPIRATION_SECS: i64 = 600;
/// Longest lifetime a request may ask for: 2^32 seconds.
const MAX_EXPIRATION_SECS: i64 = 1 << 32;
const GROUP: &str = "authentication.k8s.io";

/// Whether a resource request is a TokenRequest.
pub fn is_token_request(req: &ResourceRequest) -> bool {
    req.verb == Verb::Create
        && req.group.is_empty()
        && req.resource == "serviceaccounts"
        && req.subresource.as_deref() == Some("token")
        && req.name.is_some()
}

/// What a TokenRequest asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Spec {
    audiences: Vec<String>,
    expiration_seconds: Option<i64>,
    bound: Option<BoundRef>,
}

/// `spec.boundObjectRef`.
#[derive(Debug, Default, PartialEq, Eq)]
struct BoundRef {
    kind: String,
    api_version: String,
    name: String,
    uid: String,
}

impl Authenticator {
    /// Issues a token for service account `ns/name`.
    pub async fn token_request(
        &self,
        req: &ResourceRequest,
        body: Body<'_>,
    ) -> Result<Reply, ApiError> {
        let (Some(ns), Some(name)) = (req.namespace.as_deref(), req.name.as_deref()) else {
            return Err(ApiError::bad_request(
                "a TokenRequest names a service account: POST /api/v1/namespaces/<namespace>/serviceaccounts/<name>/token",
            ));
        };
        let spec = parse(&body)?;
        let expiration = spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECS);
        if !(MIN_EXPIRATION_SECS..=MAX_EXPIRATION_SECS).contains(&expiration) {
            let why = if expiration < MIN_EXPIRATION_SECS {
                "may not specify a duration less than 10 minutes"
            } else {
                "may not specify a duration larger than 2^32 seconds"
            };
            return Err(ApiError::invalid(
                GROUP,
                "TokenRequest",
                name,
                format!(
                    "TokenRequest.{GROUP} \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {expiration}: {why}"
                ),
                vec![
                    json!({"reason": "FieldValueInvalid", "message": format!("Invalid value: {expiration}: {why}"), "field": "spec.expirationSeconds"}),
                ],
            ));
        }
        let sa_kind = shoal_api::find_resource("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::internal("serviceaccounts are not served"))?;
        let sa = self
            .storage
            .get(&object_key(sa_kind, Some(ns), name))
            .await?
            .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?
            .value;
        let audiences = if spec.audiences.is_empty() {
            vec![SERVICE_ACCOUNT_ISSUER.to_owned()]
        } else {
            spec.audiences.clone()
        };
        let mut claims = Claims::service_account(
            ns,
            name,
            uid_of(&sa),
            Duration::from_secs(expiration.unsigned_abs()),
        );
        claims.aud = audiences.clone();
        claims.jti = Some(uuid::Uuid::new_v4().to_string());
        let bound = match &spec.bound {
            Some(bound) => Some(self.bind(&mut claims, ns, name, bound).await?),
            None => None,
        };
        let token = self
            .signer
            .sign(&claims)
            .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
        let mut spec_out = json!({"audiences": audiences, "expirationSeconds": expiration});
        if let Some(b) = bound {
            spec_out["boundObjectRef"] = b;
        }
        Ok(Reply::json(
            201,
            &json!({
                "kind": "TokenRequest",
                "apiVersion": format!("{GROUP}/v1"),
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
                "spec": spec_out,
                "status": {"token": token, "expirationTimestamp": timestamp(claims.exp)},
            }),
        ))
    }

    /// Binds the claims to the object `bound` names, which must exist (with
    /// the uid given, if one is); returns the reference as the response
    /// shows it.
    async fn bind(
        &self,
        claims: &mut Claims,
        ns: &str,
        sa: &str,
        bound: &BoundRef,
    ) -> Result<Value, ApiError> {
        let (plural, namespaced) = match (bound.api_version.as_str(), bound.kind.as_str()) {
            ("v1" | "", "Pod") => ("pods", true),
            ("v1" | "", "Secret") => ("secrets", true),
            ("v1" | "", "Node") => ("nodes", false),
            (v, k) => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {v}, Kind={k}: use a v1 Pod, Secret or Node"
                )));
            }
        };
        if bound.name.is_empty() {
            return Err(ApiError::bad_request(
                "spec.boundObjectRef.name: Required value",
            ));
        }
        let kind = shoal_api::find_resource("", "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        let obj_ns = namespaced.then_some(ns);
        let obj = self
            .storage
            .get(&object_key(kind, obj_ns, &bound.name))
            .await?
            .ok_or_else(|| ApiError::not_found("", plural, &bound.name))?
            .value;
        let uid = uid_of(&obj);
        if !bound.uid.is_empty() && bound.uid != uid {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{}\": the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                    bound.kind, bound.name, bound.uid
                ),
                details: Some(json!({"name": bound.name, "kind": bound.kind})),
            });
        }
        if plural == "pods" {
            let runs_as = obj
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if runs_as != sa {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{sa}\" to pod running with different serviceaccount name."
                )));
            }
        }
        let named = Some(ObjectRef {
            name: bound.name.clone(),
            uid: uid.to_owned(),
        });
        match plural {
            "pods" => claims.kubernetes.pod = named,
            "secrets" => claims.kubernetes.secret = named,
            _ => claims.kubernetes.node = named,
        }
        Ok(json!({"kind": bound.kind, "apiVersion": "v1", "name": bound.name, "uid": uid}))
    }
}

fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Unix seconds as Kubernetes writes a timestamp.
fn timestamp(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The spec of a TokenRequest body in JSON, YAML or protobuf.
fn parse(body: &Body<'_>) -> Result<Spec, ApiError> {
    let obj = decode_body(body)?;
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != "TokenRequest"
    {
        return Err(ApiError::bad_request(format!(
            "the body is a {kind}; POST a TokenRequest ({GROUP}/v1) to serviceaccounts/<name>/token"
        )));
    }
    from_json(obj.get("spec").unwrap_or(&Value::Null))
}

fn from_json(spec: &Value) -> Result<Spec, ApiError> {
    let field =
        |name: &str, want: &str| ApiError::bad_request(format!("spec.{name} must be {want}"));
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field("audiences", "a list of strings"))?,
        Some(_) => return Err(field("audiences", "a list of strings")),
    };
    let expiration_seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| field("expirationSeconds", "an integer"))?,
        ),
    };
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            Some(BoundRef {
                kind: s("kind"),
                api_version: s("apiVersion"),
                name: s("name"),
                uid: s("uid"),
            })
        }
    };
    Ok(Spec {
        audiences,
        expiration_seconds,
        bound,
    })
}

#[cfg(test)]
mod tests;
