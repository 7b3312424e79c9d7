//! Field paths in Kubernetes' spelling: `spec.containers[0].name`, map keys
//! as `data[key]`.

use std::fmt;

/// A field path, built the way `field.Path` builds it in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Path(String);

impl Path {
    /// A path starting at `name` (`metadata`, `spec`, or empty for the object).
    pub(crate) fn new(name: &str) -> Self {
        Self(name.to_string())
    }

    /// `self.name`.
    pub(crate) fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// `self[i]`.
    pub(crate) fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// `self[key]`: Kubernetes does not quote map keys in paths.
    pub(crate) fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
