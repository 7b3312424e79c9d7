//! Hashable identity of a JSON value, for matching list elements by merge
//! key or, in lists of scalars, by value.

use serde_json::Value;

/// A JSON value reduced to what Kubernetes compares: numbers by value
/// (`80` and `80.0` are one port, as Go's decoded float64s are), strings
/// and booleans as they are, objects and arrays by their JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ListKey {
    Null,
    Bool(bool),
    Int(i128),
    Float(u64),
    Str(String),
    Composite(String),
}

/// The largest magnitude below which every integral f64 converts exactly.
const EXACT_F64_INTEGERS: f64 = 9_007_199_254_740_992.0;

impl ListKey {
    /// The key of one value.
    pub(crate) fn of(value: &Value) -> ListKey {
        match value {
            Value::Null => ListKey::Null,
            Value::Bool(b) => ListKey::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    ListKey::Int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    ListKey::Int(i128::from(u))
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    if f.fract() == 0.0 && f.abs() < EXACT_F64_INTEGERS {
                        // Integral and below 2^53, so the cast is exact.
                        ListKey::Int(i128::from(f as i64))
                    } else {
                        ListKey::Float(f.to_bits())
                    }
                }
            }
            Value::String(s) => ListKey::Str(s.clone()),
            other => ListKey::Composite(other.to_string()),
        }
    }

    /// The key of an object element by its merge key field, if it is an
    /// object that has that field.
    pub(crate) fn of_field(element: &Value, merge_key: &str) -> Option<ListKey> {
        element
            .as_object()
            .and_then(|object| object.get(merge_key))
            .map(ListKey::of)
    }
}
