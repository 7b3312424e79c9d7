//! Applying a PATCH request's body to the live object, by patch type.

use serde_json::Value;

use crate::body::{self, describe};
use crate::depth;
use crate::error::PatchError;
use crate::patch_type::PatchType;
use crate::schema::{self, Schema};
use crate::strategic::{self, Mode};
use crate::type_ref::TypeRef;
use crate::{apply, rfc6902};

/// Applies a PATCH body of type `ty` to `live`, the stored object of type
/// `type_ref`, and returns the patched object. `live` is `Value::Null` when
/// the object does not exist, which only [`PatchType::Apply`] accepts (the
/// result is then the applied configuration).
///
/// Strategic merge patches on types without a patch schema (see
/// [`TypeRef::has_patch_schema`]) merge maps and replace lists, as a JSON
/// merge patch would, with directives still honoured so none is stored.
/// The result is not validated: the apiserver checks it as it would any
/// update (name, resourceVersion, schema).
pub fn apply_patch(
    type_ref: &TypeRef<'_>,
    live: &Value,
    patch_body: &[u8],
    ty: PatchType,
) -> Result<Value, PatchError> {
    depth::check(live, "the live object")?;
    let live = (!live.is_null()).then_some(live);
    let existing = || live.ok_or(PatchError::NoLiveObject { ty });
    match ty {
        PatchType::Apply => apply::apply(type_ref, live, patch_body),
        PatchType::Json => {
            let live = existing()?;
            rfc6902::apply(live.clone(), body::parse_json(patch_body, ty)?)
        }
        PatchType::Merge => {
            let mut patched = existing()?.clone();
            json_patch::merge(&mut patched, &body::parse_json(patch_body, ty)?);
            Ok(patched)
        }
        PatchType::StrategicMerge => {
            let live = existing()?;
            strategic_merge(type_ref, live, body::parse_json(patch_body, ty)?)
        }
    }
}

fn strategic_merge(
    type_ref: &TypeRef<'_>,
    live: &Value,
    patch: Value,
) -> Result<Value, PatchError> {
    let ty = PatchType::StrategicMerge;
    let Value::Object(live) = live else {
        return Err(PatchError::LiveNotObject {
            found: describe(live),
        });
    };
    let Value::Object(patch) = patch else {
        return Err(PatchError::WrongBodyShape {
            ty,
            expected: "a JSON object",
            found: describe(&patch),
        });
    };
    let schema = schema::for_type(type_ref).unwrap_or(Schema::EMPTY);
    strategic::merge(live.clone(), patch, schema, Mode::Patch)
        .map(Value::Object)
        .map_err(|failure| PatchError::Merge {
            ty,
            path: failure.path,
            reason: failure.reason,
        })
}

#[cfg(test)]
mod tests;
