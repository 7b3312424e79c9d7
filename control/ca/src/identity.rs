//! Who a caller is, in Kubernetes' terms: a user name and the groups it
//! belongs to, and the well-known names shoal hands out.

/// The user name of the cluster's first administrator.
pub const ADMIN_USER: &str = "shoal-admin";
/// The group Kubernetes' RBAC lets do anything (the admin's group).
pub const MASTERS_GROUP: &str = "system:masters";
/// The group every node's identity belongs to.
pub const NODES_GROUP: &str = "system:nodes";
/// The group every service account belongs to.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// An authenticated caller: for a client certificate, CN is the user and each
/// O is a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user name, such as `shoal-admin` or `system:node:node-1`.
    pub user: String,
    /// The groups, such as `system:masters`, in the order the credential lists them.
    pub groups: Vec<String>,
}

/// The user name a node authenticates as: `system:node:<node>`.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}
