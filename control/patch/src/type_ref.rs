//! Which Kubernetes type an object is: its apiVersion and kind.

use serde_json::Value;

use crate::schema;

/// An object's type as the apiserver serves it, e.g. `apps/v1` `Deployment`.
/// Strategic merge patch needs it to find which lists merge by which key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeRef<'a> {
    /// `v1` for the core group, `<group>/<version>` otherwise.
    pub api_version: &'a str,
    /// The kind, e.g. `Pod`.
    pub kind: &'a str,
}

impl<'a> TypeRef<'a> {
    /// A type from its apiVersion and kind.
    pub const fn new(api_version: &'a str, kind: &'a str) -> Self {
        Self { api_version, kind }
    }

    /// The type an object names in its `apiVersion` and `kind` fields, if it
    /// names both.
    pub fn of(object: &'a Value) -> Option<Self> {
        Some(Self {
            api_version: object.get("apiVersion")?.as_str()?,
            kind: object.get("kind")?.as_str()?,
        })
    }

    /// Whether shoal knows this type's patch strategies and merge keys.
    /// Strategic merge patches on other types (custom resources) merge maps
    /// and replace lists, as a JSON merge patch does; Kubernetes itself
    /// rejects them with 415, which an apiserver wanting that behaviour can
    /// decide with this.
    pub fn has_patch_schema(&self) -> bool {
        schema::for_type(self).is_some()
    }
}
