//! RFC 6902 JSON patch (`application/json-patch+json`), applied one
//! operation at a time with the json-patch crate so that a failure names its
//! operation and why it failed.
//!
//! Growth is bounded: at most [`MAX_OPERATIONS`] operations (Kubernetes'
//! limit), results no deeper than [`MAX_DEPTH`], and `copy` operations
//! duplicating at most [`MAX_COPIED_VALUES`] values in all, since a few
//! copies of the root would otherwise grow the document exponentially.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::body::describe;
use crate::depth::{self, MAX_DEPTH};
use crate::error::PatchError;
use crate::patch_type::PatchType;

/// The most operations one JSON patch may have, as in Kubernetes.
pub(crate) const MAX_OPERATIONS: usize = 10_000;

/// The most values all `copy` operations of one patch may duplicate.
pub(crate) const MAX_COPIED_VALUES: usize = 1 << 20;

/// Applies a parsed JSON patch body to `doc`.
pub(crate) fn apply(mut doc: Value, body: Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = body else {
        return Err(PatchError::WrongBodyShape {
            ty: PatchType::Json,
            expected: "a JSON array of operations",
            found: describe(&body),
        });
    };
    if operations.len() > MAX_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: operations.len(),
            max: MAX_OPERATIONS,
        });
    }
    // An upper bound on the document's depth, kept without walking it after
    // every operation; it is only recomputed when it passes the limit.
    let mut depth_bound = depth::of(&doc);
    let mut copied = 0_usize;
    for (index, operation) in operations.into_iter().enumerate() {
        let operation: PatchOperation =
            serde_json::from_value(operation).map_err(|err| PatchError::InvalidOperation {
                index,
                reason: err.to_string(),
            })?;
        let failed = |reason: String| PatchError::OperationFailed {
            index,
            op: name(&operation),
            path: target(&operation).to_owned(),
            reason,
        };
        match &operation {
            PatchOperation::Add(op) => {
                depth_bound = depth_bound.max(tokens(op.path.as_str()) + depth::of(&op.value));
            }
            PatchOperation::Replace(op) => {
                depth_bound = depth_bound.max(tokens(op.path.as_str()) + depth::of(&op.value));
            }
            PatchOperation::Move(op) => {
                let moved = depth_bound.saturating_sub(tokens(op.from.as_str()));
                depth_bound = depth_bound.max(tokens(op.path.as_str()) + moved);
            }
            PatchOperation::Copy(op) => {
                if let Some(source) = doc.pointer(op.from.as_str()) {
                    let (depth, values) = depth::measure(source);
                    copied = copied.saturating_add(values);
                    if copied > MAX_COPIED_VALUES {
                        return Err(failed(format!(
                            "the patch copies more than {MAX_COPIED_VALUES} values in all"
                        )));
                    }
                    depth_bound = depth_bound.max(tokens(op.path.as_str()) + depth);
                }
            }
            PatchOperation::Remove(_) | PatchOperation::Test(_) => {}
        }
        if let Err(err) = json_patch::patch_unsafe(&mut doc, std::slice::from_ref(&operation)) {
            return Err(failed(explain(&doc, &operation, &err.kind)));
        }
        if depth_bound > MAX_DEPTH {
            depth_bound = depth::of(&doc);
            if depth_bound > MAX_DEPTH {
                return Err(failed(format!(
                    "the result would nest deeper than {MAX_DEPTH} levels"
                )));
            }
        }
    }
    Ok(doc)
}

fn name(operation: &PatchOperation) -> &'static str {
    match operation {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// The operation's `path`.
fn target(operation: &PatchOperation) -> &str {
    match operation {
        PatchOperation::Add(op) => op.path.as_str(),
        PatchOperation::Remove(op) => op.path.as_str(),
        PatchOperation::Replace(op) => op.path.as_str(),
        PatchOperation::Move(op) => op.path.as_str(),
        PatchOperation::Copy(op) => op.path.as_str(),
        PatchOperation::Test(op) => op.path.as_str(),
    }
}

/// The number of reference tokens in a JSON pointer.
fn tokens(pointer: &str) -> usize {
    pointer.matches('/').count()
}

/// Why an operation failed, worked out from the document it failed on.
fn explain(doc: &Value, operation: &PatchOperation, kind: &PatchErrorKind) -> String {
    match (kind, operation) {
        (PatchErrorKind::TestFailed, _) => "test failed: the value differs".to_owned(),
        (PatchErrorKind::CannotMoveInsideItself, _) => {
            "cannot move a value into one of its own children".to_owned()
        }
        (PatchErrorKind::InvalidFromPointer, PatchOperation::Move(op)) => {
            format!("from {}: {}", op.from, locate(doc, op.from.as_str(), false))
        }
        (PatchErrorKind::InvalidFromPointer, PatchOperation::Copy(op)) => {
            format!("from {}: {}", op.from, locate(doc, op.from.as_str(), false))
        }
        (PatchErrorKind::InvalidPointer, operation) => {
            let inserts = matches!(
                operation,
                PatchOperation::Add(_) | PatchOperation::Move(_) | PatchOperation::Copy(_)
            );
            if target(operation).is_empty() && !inserts {
                "the whole document cannot be removed".to_owned()
            } else {
                locate(doc, target(operation), inserts)
            }
        }
        (kind, _) => kind.to_string(),
    }
}

/// Walks a JSON pointer through `doc` and says where it stops resolving.
/// `inserts` is true for operations whose last token names a new place.
fn locate(doc: &Value, pointer: &str, inserts: bool) -> String {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut current = doc;
    for (position, token) in tokens.iter().enumerate() {
        let last = position + 1 == tokens.len();
        match current {
            Value::Object(object) => match object.get(token) {
                Some(child) => current = child,
                None => return "path not found".to_owned(),
            },
            Value::Array(list) => {
                if token == "-" {
                    return "\"-\" names no existing array element".to_owned();
                }
                let Some(index) = array_index(token) else {
                    return format!("{token:?} is not an array index");
                };
                if inserts && last && index > list.len()
                    || !(inserts && last) && index >= list.len()
                {
                    return format!(
                        "array index {index} is out of bounds (length {})",
                        list.len()
                    );
                }
                match list.get(index) {
                    Some(child) => current = child,
                    None => break,
                }
            }
            scalar => {
                return format!(
                    "path not found: {} is not an object or array",
                    describe(scalar)
                );
            }
        }
    }
    "path not found".to_owned()
}

/// An RFC 6901 array index: digits, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests;
