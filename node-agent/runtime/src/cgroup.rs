//! The host's cgroup hierarchies, as far as containers need them: where a
//! cgroups path lives under each controller, whether the kernel OOM-killed
//! something in it, and removing a pod's tree.
//!
//! Hosts come in three layouts: cgroup v1 only, hybrid (v1 controllers under
//! /sys/fs/cgroup/<controller> plus cgroup2 at /sys/fs/cgroup/unified, as on
//! the lab machines) and v2 only.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The cgroup hierarchies mounted on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// v1 hierarchies: mount point and the controllers (or `name=`) it holds.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    /// The cgroup2 mount point, if any.
    pub v2: Option<PathBuf>,
}

impl CgroupMounts {
    /// Reads /proc/self/mountinfo.
    pub fn detect() -> io::Result<CgroupMounts> {
        Ok(Self::parse(&fs::read_to_string("/proc/self/mountinfo")?))
    }

    fn parse(mountinfo: &str) -> CgroupMounts {
        let mut out = CgroupMounts::default();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = pre.split_whitespace().nth(4) else {
                continue;
            };
            let point = PathBuf::from(unescape(point));
            let mut post = post.split_whitespace();
            let (fstype, _source, options) = (post.next(), post.next(), post.next());
            match fstype {
                Some("cgroup2") => out.v2 = Some(point),
                Some("cgroup") => {
                    let controllers = options
                        .unwrap_or_default()
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro")
                                && (!o.contains('=') || o.starts_with("name="))
                        })
                        .map(str::to_owned)
                        .collect();
                    out.v1.push((point, controllers));
                }
                _ => {}
            }
        }
        out
    }

    /// Whether v1 controllers and a cgroup2 mount coexist (crun refuses
    /// this layout unless cgroup2 is hidden from it).
    pub fn is_hybrid(&self) -> bool {
        self.v2.is_some()
            && self
                .v1
                .iter()
                .any(|(_, c)| c.iter().any(|c| !c.starts_with("name=")))
    }

    /// The directory of `cgroups_path` under the memory controller: v1's
    /// memory hierarchy, else cgroup2.
    pub fn memory_dir(&self, cgroups_path: &str) -> Option<PathBuf> {
        let rel = cgroups_path.trim_start_matches('/');
        self.v1
            .iter()
            .find(|(_, c)| c.iter().any(|c| c == "memory"))
            .map(|(p, _)| p.join(rel))
            .or_else(|| self.v2.as_ref().map(|p| p.join(rel)))
    }

    /// The directory of `cgroups_path` in the cgroup2 hierarchy, if mounted.
    pub fn v2_dir(&self, cgroups_path: &str) -> Option<PathBuf> {
        self.v2
            .as_ref()
            .map(|p| p.join(cgroups_path.trim_start_matches('/')))
    }

    /// How many processes the kernel OOM killer killed in `cgroups_path`
    /// (v1 `memory.oom_control` or v2 `memory.events`, both `oom_kill N`).
    /// None if the cgroup or the counter does not exist (e.g. after the
    /// runtime deleted the container).
    pub fn oom_kills(&self, cgroups_path: &str) -> Option<u64> {
        let dir = self.memory_dir(cgroups_path)?;
        ["memory.oom_control", "memory.events"]
            .iter()
            .find_map(|f| fs::read_to_string(dir.join(f)).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
    }

    /// Removes `cgroups_path` and everything below it from every hierarchy
    /// (e.g. a pod's `/shoal/<node>/pod-<uid>` once its containers are
    /// deleted). Fails if processes are still inside.
    pub fn remove(&self, cgroups_path: &str) -> io::Result<()> {
        let rel = cgroups_path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to remove the cgroup path {cgroups_path:?}"),
            ));
        }
        let roots = self.v1.iter().map(|(p, _)| p).chain(self.v2.iter());
        for root in roots {
            remove_tree(&root.join(rel))?;
        }
        Ok(())
    }
}

/// rmdir, children first (cgroup directories hold only control files,
/// which go with the directory).
fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing the cgroup {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:35 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 25 0:37 / /mnt/with\\040space rw - ext4 /dev/vdb rw
";

    #[test]
    fn hybrid_layout() {
        let m = CgroupMounts::parse(HYBRID);
        assert!(m.is_hybrid());
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1.len(), 3);
        assert_eq!(
            m.memory_dir("/shoal/n/pod-1/c"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/shoal/n/pod-1/c"))
        );
        assert_eq!(
            m.v2_dir("/shoal/n"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/shoal/n"))
        );
        assert!(m.remove("/").is_err());
        assert!(m.remove("/a/../..").is_err());
        assert_eq!(unescape("a\\040b"), "a b");
    }
}
