//! `POST /shoal/v1/server-join`: what a new control-plane member (`shoal
//! server --join`) gets from a running one, as k3s's server bootstrap
//! hands out its bootstrap data. The caller authenticates with a bootstrap
//! token whose extra groups include [`SERVER_JOIN_GROUP`] (`shoal token
//! create --server-join`); an agent's token is refused, since the answer
//! holds the cluster CA's private key. The caller has already checked the
//! server against the pinned CA hash, so the files travel over TLS to a
//! server it trusts.
//!
//! The answer: the shared secrets (cluster CA, service-account key, Secret
//! encryption keys) and the Raft id the store gave the new member, added
//! as a learner through the store's etcd Cluster API (`MemberAdd`). The new
//! member starts its store with that id, catches up and promotes itself.

use std::{collections::BTreeMap, path::PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{authz::User, status::ApiError};

#[cfg(test)]
mod tests;

/// The path of the endpoint.
pub const SERVER_JOIN_PATH: &str = "/shoal/v1/server-join";

/// The files of the shared secrets directory a new member needs, and only
/// those (the directory may also hold the first member's own certificates).
pub const SHARED_SECRET_FILES: &[&str] = &[
    shoal_ca::CA_CERT_FILE,
    shoal_ca::CA_KEY_FILE,
    shoal_ca::SA_KEY_FILE,
    crate::encryption::ENCRYPTION_CONFIG_FILE,
    shoal_ca::MESH_CA_CERT_FILE,
    shoal_ca::MESH_CA_KEY_FILE,
];

/// What the new member asks with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJoinRequest {
    /// Its member name (`--name`), unique in the control plane.
    pub name: String,
    /// Its store's peer URL (`https://HOST:2380`), which the others dial.
    pub peer_url: String,
}

/// What it gets.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJoinResponse {
    /// Its Raft member id.
    pub member_id: u64,
    /// The store cluster's id.
    pub cluster_id: u64,
    /// The shared secret files by name, base64.
    pub files: BTreeMap<String, String>,
}

impl ServerJoinResponse {
    /// Writes the shared secret files into `dir` (owner-only), replacing
    /// what is there; the file names are checked against
    /// [`SHARED_SECRET_FILES`].
    pub fn write_files(&self, dir: &std::path::Path) -> Result<(), String> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (name, b64) in &self.files {
            if !SHARED_SECRET_FILES.contains(&name.as_str()) {
                return Err(format!("the server sent an unexpected file {name:?}"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("file {name:?} is not base64: {e}"))?;
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            std::io::Write::write_all(&mut file, &bytes)
                .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| format!("renaming to {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Answers server joins: reads the secrets from `secrets_dir` and adds
/// members through `store`.
pub struct ServerJoin {
    pub(crate) secrets_dir: PathBuf,
    pub(crate) store: etcd_client::Client,
}

impl ServerJoin {
    /// Whether `user` holds a server-join token.
    fn allowed(user: &User) -> bool {
        user.groups.iter().any(|g| g == shoal_ca::SERVER_JOIN_GROUP)
    }

    /// Adds the member and returns the secrets.
    pub(crate) async fn join(
        &self,
        user: &User,
        body: &[u8],
    ) -> Result<ServerJoinResponse, ApiError> {
        if !Self::allowed(user) {
            return Err(ApiError::forbidden(format!(
                "user {:?} cannot join the control plane: only a server-join bootstrap token (`shoal token create --server-join`) may, since the answer holds the cluster CA's key",
                user.name
            )));
        }
        let request: ServerJoinRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the server-join request is not valid: {e}"))
        })?;
        if request.name.is_empty()
            || !(request.peer_url.starts_with("https://")
                || request.peer_url.starts_with("http://"))
        {
            return Err(ApiError::bad_request(format!(
                "the server-join request needs a name and a peerURL such as https://10.0.0.2:2380, got name {:?} and peerURL {:?}",
                request.name, request.peer_url
            )));
        }
        let mut files = BTreeMap::new();
        for name in SHARED_SECRET_FILES {
            let path = self.secrets_dir.join(name);
            let bytes = std::fs::read(&path)
                .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
            files.insert(
                (*name).to_owned(),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        let mut store = self.store.clone();
        let members = store
            .member_list()
            .await
            .map_err(|e| ApiError::timeout(format!("listing the store's members: {e}")))?;
        // A member that joined before and restarted from an empty data dir
        // would come back with its old peer URL: say so instead of adding
        // it twice.
        if let Some(m) = members
            .members()
            .iter()
            .find(|m| m.name() == request.name || m.peer_urls().contains(&request.peer_url))
        {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!(
                    "the store already has a member named {:?} with peer URL {:?}: remove it first (etcdctl member remove {:x}) or join under another --name and --store-peer-listen",
                    m.name(),
                    m.peer_urls().join(","),
                    m.id()
                ),
            ));
        }
        let added = store
            .member_add(
                [request.peer_url.as_str()],
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
            .map_err(|e| {
                ApiError::timeout(format!("adding {} to the store: {e}", request.peer_url))
            })?;
        let member_id = added
            .member()
            .map(etcd_client::Member::id)
            .ok_or_else(|| ApiError::internal("the store added no member"))?;
        let cluster_id = added
            .header()
            .map_or(0, etcd_client::ResponseHeader::cluster_id);
        tracing::info!(
            name = %request.name,
            peer = %request.peer_url,
            member_id,
            "a control-plane member joined the store as a learner"
        );
        Ok(ServerJoinResponse {
            member_id,
            cluster_id,
            files,
        })
    }
}
