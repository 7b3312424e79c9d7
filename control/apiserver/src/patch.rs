//! PATCH bodies, through shoal-patch, as `ApiError`s clients understand.

use serde_json::Value;
use shoal_api::Kind;
pub use shoal_patch::PatchType;

use crate::status::ApiError;

impl From<shoal_patch::PatchError> for ApiError {
    fn from(e: shoal_patch::PatchError) -> Self {
        let message = e.to_string();
        match e.http_status() {
            415 => ApiError::unsupported_media_type(&message),
            413 => ApiError::too_large(crate::server::MAX_BODY),
            400 => ApiError::bad_request(message),
            422 => ApiError {
                code: 422,
                reason: "Invalid",
                message,
                details: None,
            },
            _ => ApiError::internal(message),
        }
    }
}

/// Applies a patch of type `ty` to the live object.
pub fn apply(kind: &Kind, live: &Value, body: &[u8], ty: PatchType) -> Result<Value, ApiError> {
    let api_version = kind.api_version();
    let ty_ref = shoal_patch::TypeRef::new(&api_version, kind.kind);
    Ok(shoal_patch::apply_patch(&ty_ref, live, body, ty)?)
}

/// Parses a YAML (or JSON) document into an object.
pub fn parse_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
}
