//! Parsing PATCH bodies: JSON for three patch types, YAML or JSON for apply.

use serde_json::Value;

use crate::depth;
use crate::error::PatchError;
use crate::patch_type::PatchType;

/// Parses a JSON body and checks its nesting.
pub(crate) fn parse_json(body: &[u8], ty: PatchType) -> Result<Value, PatchError> {
    let value =
        serde_json::from_slice(body).map_err(|source| PatchError::InvalidJson { ty, source })?;
    depth::check(&value, "the patch body")?;
    Ok(value)
}

/// How deep a YAML body may nest. Lower than [`crate::MAX_DEPTH`] because
/// serde-saphyr needs about 20 KiB of stack per level in unoptimized builds,
/// and a 2 MiB thread stack overflows near 90 levels; this is also that
/// parser's own default. JSON bodies, which kubectl sends, get the full
/// [`crate::MAX_DEPTH`].
pub(crate) const MAX_YAML_DEPTH: usize = 64;

/// Parses an apply body: as JSON when it looks like a JSON object (what
/// `kubectl apply --server-side` sends), as YAML otherwise or when that
/// fails (`{a: 1}` is a YAML flow mapping). A body that is neither reports
/// the JSON error if it looked like JSON.
pub(crate) fn parse_apply(body: &[u8]) -> Result<Value, PatchError> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first == Some(&b'{') {
        return match parse_json(body, PatchType::Apply) {
            Err(json @ PatchError::InvalidJson { .. }) => parse_yaml(body).map_err(|_| json),
            parsed => parsed,
        };
    }
    parse_yaml(body)
}

fn parse_yaml(body: &[u8]) -> Result<Value, PatchError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let value: Value = serde_saphyr::from_slice_with_options(body, options).map_err(|err| {
        PatchError::InvalidYaml {
            reason: err.to_string(),
        }
    })?;
    depth::check(&value, "the patch body")?;
    Ok(value)
}

/// What kind of JSON value this is, for error messages.
pub(crate) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
