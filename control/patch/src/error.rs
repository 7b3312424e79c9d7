//! What can go wrong applying a PATCH body, and the HTTP status the
//! apiserver answers with for each.

use crate::patch_type::PatchType;

/// Why a patch could not be applied. Messages name the operation or the
/// field path that failed so the apiserver can return them as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The request's Content-Type is not one of the four patch types.
    #[error(
        "unsupported patch content type {content_type:?}: use application/json-patch+json, \
         application/merge-patch+json, application/strategic-merge-patch+json or \
         application/apply-patch+yaml"
    )]
    UnsupportedContentType {
        /// The Content-Type as the client sent it.
        content_type: String,
    },

    /// The body is not JSON.
    #[error("{ty} body is not valid JSON: {source}")]
    InvalidJson {
        /// The patch type the body was parsed as.
        ty: PatchType,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// An apply body is neither JSON nor YAML.
    #[error("apply patch body is not valid YAML: {reason}")]
    InvalidYaml {
        /// The YAML parser's message.
        reason: String,
    },

    /// The body parsed but has the wrong shape at its top level.
    #[error("{ty} body must be {expected}, not {found}")]
    WrongBodyShape {
        /// The patch type the body was parsed as.
        ty: PatchType,
        /// What the patch type needs, e.g. "a JSON array of operations".
        expected: &'static str,
        /// What the body was, e.g. "a string".
        found: &'static str,
    },

    /// A JSON patch has more operations than the apiserver accepts.
    #[error("json patch has {count} operations; at most {max} are accepted")]
    TooManyOperations {
        /// How many operations the body has.
        count: usize,
        /// The limit, the same as Kubernetes'.
        max: usize,
    },

    /// A JSON patch operation is not a valid RFC 6902 operation object.
    #[error("json patch operation {index}: {reason}")]
    InvalidOperation {
        /// The operation's index in the patch array, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A JSON patch operation could not be applied to the object.
    #[error("json patch operation {index} ({op} {path}): {reason}")]
    OperationFailed {
        /// The operation's index in the patch array, from 0.
        index: usize,
        /// The operation: add, remove, replace, move, copy or test.
        op: &'static str,
        /// The operation's `path`, a JSON pointer.
        path: String,
        /// Why it failed, e.g. "path not found".
        reason: String,
    },

    /// A strategic merge patch or apply body could not be merged.
    #[error("{ty}: {path}: {reason}")]
    Merge {
        /// Strategic merge patch or apply patch.
        ty: PatchType,
        /// Where in the object, e.g. `spec.containers[1]`.
        path: String,
        /// What is wrong there.
        reason: MergeError,
    },

    /// An apply body does not describe the object being applied.
    #[error("apply patch: {field}: {reason}")]
    InvalidApply {
        /// The offending field, e.g. `kind`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The live object or the body nests deeper than [`crate::MAX_DEPTH`].
    #[error("{what} nests deeper than {max} levels")]
    TooDeep {
        /// Which document, e.g. "the patch body".
        what: &'static str,
        /// The limit.
        max: usize,
    },

    /// Only an apply patch may create an object; the others need one to
    /// patch.
    #[error("the object does not exist, and a {ty} cannot create it")]
    NoLiveObject {
        /// The patch type that needs a live object.
        ty: PatchType,
    },

    /// The stored object is not a JSON object.
    #[error("the live object is {found}, not a JSON object")]
    LiveNotObject {
        /// What it is, e.g. "an array".
        found: &'static str,
    },
}

impl PatchError {
    /// The HTTP status Kubernetes answers with for this error: 415 for an
    /// unknown content type, 404 when there is nothing to patch, 400 for a
    /// body that does not parse, 413 for too many JSON patch operations, 422
    /// for a patch that parses but cannot be applied, and 500 when the stored
    /// object is broken.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnsupportedContentType { .. } => 415,
            Self::NoLiveObject { .. } => 404,
            Self::InvalidJson { .. }
            | Self::InvalidYaml { .. }
            | Self::WrongBodyShape { .. }
            | Self::InvalidOperation { .. }
            | Self::InvalidApply { .. } => 400,
            Self::TooManyOperations { .. } => 413,
            Self::OperationFailed { .. } | Self::Merge { .. } | Self::TooDeep { .. } => 422,
            Self::LiveNotObject { .. } => 500,
        }
    }
}

/// Why a strategic merge patch (or an apply body merged the same way) could
/// not be merged at one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// `$patch` has a value other than replace, delete or merge.
    #[error("unknown $patch directive {0}: use \"replace\", \"delete\" or \"merge\"")]
    UnknownDirective(String),

    /// An element of a list merged by key lacks the key.
    #[error("missing merge key {0:?}")]
    MissingMergeKey(&'static str),

    /// An element of a list merged by key is not an object.
    #[error("must be an object with merge key {0:?}")]
    ElementNotObject(&'static str),

    /// `$patch: delete` in a list that is not merged by key.
    #[error("$patch: delete needs a list merged by key, and this list has no merge key")]
    DeleteWithoutMergeKey,

    /// A merge list of objects whose field has no merge key.
    #[error("a list of objects can only be merged by key, and this field has no merge key")]
    NoMergeKey,

    /// A merge list mixing objects and scalars.
    #[error("list elements must be all objects or all scalars to be merged")]
    MixedElements,

    /// A merge list of lists.
    #[error("lists of lists cannot be merged")]
    ListOfLists,

    /// A directive that takes a list got something else.
    #[error("must be a list")]
    NotAList,

    /// `$retainKeys` holds something other than field names.
    #[error("must be a list of field names")]
    RetainKeysNotNames,

    /// The patch sets a field that its `$retainKeys` list would clear.
    #[error("field {0:?} is set in the patch but not listed in $retainKeys")]
    NotRetained(String),

    /// The patch list is not in the order its `$setElementOrder` list gives.
    #[error("the patch list is not in the order that $setElementOrder gives")]
    OrderMismatch,

    /// `$setElementOrder` or `$deleteFromPrimitiveList` without `/<field>`.
    #[error("directive {0:?} must name its list: {0}/<field>")]
    DirectiveWithoutField(String),

    /// An apply body carries a patch directive.
    #[error("{0:?} is a patch directive, which an apply configuration may not contain")]
    DirectiveInApply(String),
}
