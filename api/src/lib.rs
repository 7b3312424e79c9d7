//! shoal's resource model: every kind the API serves (group, version,
//! resource name, scope, short names, subresources) and the cluster's
//! reserved names and addresses.
#![forbid(unsafe_code)]

mod defaults;
pub mod identity;
mod kinds;
pub mod proto;
mod table;
mod validation;

pub use defaults::{apply_defaults, prepare_for_create};
pub use kinds::{KINDS, Kind, Scope, find_kind, find_resource, groups, kinds_in};
pub use table::{IncludeObject, InvalidIncludeObject, table};
pub use validation::quantity::parse as parse_quantity;
pub use validation::{
    FieldError, FieldErrorKind, invalid_message, strict_error_message, unknown_fields, validate,
};
