//! shoal's PATCH bodies: RFC 6902 JSON patch, RFC 7386 JSON merge patch,
//! Kubernetes strategic merge patch (with the directives kubectl sends) and
//! a simplified server-side apply, over serde_json values. The apiserver
//! picks the [`PatchType`] from the Content-Type and calls [`apply_patch`].
//!
//! Every input may come from a client: nothing here panics on it, and
//! recursion is bounded by rejecting documents nested deeper than
//! [`MAX_DEPTH`].

#![forbid(unsafe_code)]

mod apply;
mod body;
mod depth;
mod error;
mod patch_type;
mod request;
mod rfc6902;
mod schema;
mod strategic;
mod type_ref;

pub use depth::MAX_DEPTH;
pub use error::{MergeError, PatchError};
pub use patch_type::PatchType;
pub use request::apply_patch;
pub use type_ref::TypeRef;
