//! Which uid, gid and groups a container runs as: the image's `User`
//! (names looked up in the image's /etc/passwd and /etc/group) overridden
//! by Kubernetes' `runAsUser`, `runAsGroup` and `supplementalGroups`.

use std::{fs, path::Path};

use crate::root_path;

/// The identity of a container's processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

/// A user or group the image names but does not define.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The user name is not in the image's /etc/passwd.
    #[error(
        "the image's user {name:?} is not in its /etc/passwd; set securityContext.runAsUser to a uid"
    )]
    UnknownUser {
        /// The name from the image config.
        name: String,
    },
    /// The group name is not in the image's /etc/group.
    #[error(
        "the image's group {name:?} is not in its /etc/group; set securityContext.runAsGroup to a gid"
    )]
    UnknownGroup {
        /// The name from the image config.
        name: String,
    },
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves the identity the Kubernetes way: `run_as_user` wins over the
/// image's `User` (`name`, `uid`, `name:group` or `uid:gid`); the primary
/// group is `run_as_group`, else the image's group, else the user's group
/// in /etc/passwd, else 0; supplementary groups are the user's groups in
/// /etc/group plus `supplemental_groups`.
pub fn resolve_user(
    rootfs: &Path,
    image_user: Option<&str>,
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    supplemental_groups: &[u32],
) -> Result<User, UserError> {
    let passwd = read_passwd(rootfs);
    let groups = read_group(rootfs);
    let (user_part, group_part) = match image_user.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => match u.split_once(':') {
            Some((user, group)) => (Some(user), Some(group)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    let entry = match (run_as_user, user_part) {
        (Some(uid), _) => passwd.iter().find(|p| p.uid == uid),
        (None, Some(user)) => match user.parse::<u32>() {
            Ok(uid) => passwd.iter().find(|p| p.uid == uid),
            Err(_) => Some(passwd.iter().find(|p| p.name == user).ok_or_else(|| {
                UserError::UnknownUser {
                    name: user.to_owned(),
                }
            })?),
        },
        (None, None) => passwd.iter().find(|p| p.uid == 0),
    };
    let uid = match (run_as_user, user_part) {
        (Some(uid), _) => uid,
        (None, Some(user)) => user
            .parse::<u32>()
            .ok()
            .or(entry.map(|e| e.uid))
            .unwrap_or(0),
        (None, None) => 0,
    };
    let image_gid = match group_part.filter(|_| run_as_user.is_none()) {
        Some(group) => Some(match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|g| g.name == group)
                .map(|g| g.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    name: group.to_owned(),
                })?,
        }),
        None => None,
    };
    let gid = run_as_group
        .or(image_gid)
        .or(entry.map(|e| e.gid))
        .unwrap_or(0);
    let mut additional_gids: Vec<u32> = match entry {
        Some(e) => groups
            .iter()
            .filter(|g| g.members.contains(&e.name))
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.extend_from_slice(supplemental_groups);
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads an /etc file of the image; a missing or unreadable file is empty
/// (many images have none, and numeric ids need none).
fn read_etc(rootfs: &Path, name: &str) -> String {
    root_path::resolve(rootfs, Path::new(name))
        .and_then(fs::read_to_string)
        .unwrap_or_default()
}

fn read_passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_etc(rootfs, "etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_owned(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn read_group(rootfs: &Path) -> Vec<GroupEntry> {
    read_etc(rootfs, "etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_owned(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("etc")).expect("mkdir");
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .expect("passwd");
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,root\nnobody:x:65534:\n",
        )
        .expect("group");
        dir
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> User {
        User {
            uid,
            gid,
            additional_gids: groups.to_vec(),
        }
    }

    #[test]
    fn image_users_and_kubernetes_overrides() -> Result<(), UserError> {
        let r = rootfs();
        let p = r.path();
        assert_eq!(resolve_user(p, None, None, None, &[])?, user(0, 0, &[10]));
        assert_eq!(
            resolve_user(p, Some("app"), None, None, &[])?,
            user(1000, 1001, &[10])
        );
        assert_eq!(
            resolve_user(p, Some("1000"), None, None, &[])?,
            user(1000, 1001, &[10])
        );
        assert_eq!(
            resolve_user(p, Some("app:nobody"), None, None, &[])?,
            user(1000, 65534, &[10])
        );
        assert_eq!(
            resolve_user(p, Some("4242:7"), None, None, &[])?,
            user(4242, 7, &[])
        );
        assert_eq!(
            resolve_user(p, Some("app"), Some(65534), None, &[5])?,
            user(65534, 65534, &[5])
        );
        assert_eq!(
            resolve_user(p, None, Some(2000), Some(3000), &[4, 4])?,
            user(2000, 3000, &[4])
        );
        let err = resolve_user(p, Some("ghost"), None, None, &[]).expect_err("unknown user");
        assert!(err.to_string().contains("\"ghost\""), "{err}");
        // runAsUser makes an unknown image user irrelevant.
        assert_eq!(
            resolve_user(p, Some("ghost"), Some(7), None, &[])?,
            user(7, 0, &[])
        );
        Ok(())
    }
}
