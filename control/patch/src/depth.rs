//! Nesting limits, so that recursion over untrusted documents stays bounded.

use serde_json::Value;

use crate::error::PatchError;

/// The deepest nesting of objects and arrays accepted in a live object, a
/// patch body or a JSON patch's result. Kubernetes objects nest a few dozen
/// levels at most; serde_json refuses to parse past 128.
pub const MAX_DEPTH: usize = 100;

/// A value's nesting depth (a scalar is 0, `{}` and `[]` are 1) and its
/// number of values, counted without recursion.
pub(crate) fn measure(value: &Value) -> (usize, usize) {
    let mut stack = vec![(value, 0_usize)];
    let mut depth = 0;
    let mut values = 0_usize;
    while let Some((value, level)) = stack.pop() {
        values = values.saturating_add(1);
        match value {
            Value::Object(object) => {
                depth = depth.max(level + 1);
                stack.extend(object.values().map(|child| (child, level + 1)));
            }
            Value::Array(list) => {
                depth = depth.max(level + 1);
                stack.extend(list.iter().map(|child| (child, level + 1)));
            }
            _ => {}
        }
    }
    (depth, values)
}

/// A value's nesting depth.
pub(crate) fn of(value: &Value) -> usize {
    measure(value).0
}

/// Fails when `value`, described as `what`, nests deeper than [`MAX_DEPTH`].
pub(crate) fn check(value: &Value, what: &'static str) -> Result<(), PatchError> {
    if of(value) > MAX_DEPTH {
        return Err(PatchError::TooDeep {
            what,
            max: MAX_DEPTH,
        });
    }
    Ok(())
}
