//! Server-side apply (`application/apply-patch+yaml`), simplified.
//!
//! The body is the caller's whole configuration of the object. With no live
//! object it becomes the object (nulls dropped). Otherwise it is merged into
//! the live object with strategic merge semantics: fields it sets win, maps
//! merge, lists with a merge key merge by key, other lists are replaced,
//! and for unions (retainKeys fields such as a Deployment's `strategy` or a
//! volume's source) members it does not set are cleared.
//!
//! What real server-side apply does and this does not: managedFields are
//! not tracked, so there are no field managers, no conflicts and no
//! `force`; a field the configuration stops setting is kept rather than
//! removed (only an explicit `null` removes it); associative lists merge by
//! the strategic merge key alone (e.g. container ports by containerPort,
//! not containerPort+protocol); nulls delete, as in a strategic merge patch.

use serde_json::{Map, Value};

use crate::body::{self, describe};
use crate::error::PatchError;
use crate::patch_type::PatchType;
use crate::schema::{self, Schema};
use crate::strategic::{self, Mode};
use crate::type_ref::TypeRef;

/// Applies an apply body to the live object, or creates it.
pub(crate) fn apply(
    type_ref: &TypeRef<'_>,
    live: Option<&Value>,
    body: &[u8],
) -> Result<Value, PatchError> {
    let applied = body::parse_apply(body)?;
    let Value::Object(applied) = applied else {
        return Err(PatchError::WrongBodyShape {
            ty: PatchType::Apply,
            expected: "an object",
            found: describe(&applied),
        });
    };
    check_names_type(&applied, "apiVersion", type_ref.api_version)?;
    check_names_type(&applied, "kind", type_ref.kind)?;
    let managed_fields = applied
        .get("metadata")
        .and_then(|metadata| metadata.get("managedFields"));
    if managed_fields.is_some_and(|fields| !fields.is_null()) {
        return Err(PatchError::InvalidApply {
            field: "metadata.managedFields",
            reason: "must not be set in an apply configuration".to_owned(),
        });
    }
    let original = match live {
        None => Map::new(),
        Some(Value::Object(live)) => live.clone(),
        Some(other) => {
            return Err(PatchError::LiveNotObject {
                found: describe(other),
            });
        }
    };
    let schema = schema::for_type(type_ref).unwrap_or(Schema::EMPTY);
    strategic::merge(original, applied, schema, Mode::Apply)
        .map(Value::Object)
        .map_err(|failure| PatchError::Merge {
            ty: PatchType::Apply,
            path: failure.path,
            reason: failure.reason,
        })
}

/// Server-side apply needs the configuration to say what it configures.
fn check_names_type(
    applied: &Map<String, Value>,
    field: &'static str,
    expected: &str,
) -> Result<(), PatchError> {
    match applied.get(field) {
        Some(Value::String(value)) if value == expected => Ok(()),
        Some(Value::String(value)) => Err(PatchError::InvalidApply {
            field,
            reason: format!("is {value:?} but the object is {expected:?}"),
        }),
        Some(other) => Err(PatchError::InvalidApply {
            field,
            reason: format!("must be a string, not {}", describe(other)),
        }),
        None => Err(PatchError::InvalidApply {
            field,
            reason: format!("must be set (to {expected:?})"),
        }),
    }
}

#[cfg(test)]
mod tests;
