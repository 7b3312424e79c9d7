use std::path::PathBuf;

use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};

use super::{BundleError, oci_config};
use crate::spec::{ContainerSpec, Mount, Namespace, Seccomp};

fn spec() -> ContainerSpec {
    ContainerSpec::new("c1", "/nonexistent", vec!["sh".into()])
}

fn caps(config: &Spec) -> Vec<Capability> {
    let mut caps: Vec<Capability> = config
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    caps.sort_by_key(|c| c.to_string());
    caps
}

#[test]
fn default_capabilities_and_changes() -> Result<(), BundleError> {
    let base = caps(&oci_config(&spec())?);
    assert_eq!(base.len(), 14);
    assert!(base.contains(&Capability::NetBindService));
    assert!(!base.contains(&Capability::NetAdmin));

    let mut s = spec();
    s.capabilities.add = vec!["NET_ADMIN".into(), "cap_sys_time".into()];
    s.capabilities.drop = vec!["CAP_NET_RAW".into(), "chown".into()];
    let got = caps(&oci_config(&s)?);
    assert!(got.contains(&Capability::NetAdmin) && got.contains(&Capability::SysTime));
    assert!(!got.contains(&Capability::NetRaw) && !got.contains(&Capability::Chown));

    s.capabilities.add = vec!["NET_BIND_SERVICE".into()];
    s.capabilities.drop = vec!["ALL".into()];
    assert_eq!(caps(&oci_config(&s)?), vec![Capability::NetBindService]);

    s.capabilities.add = vec!["NET_FLY".into()];
    let err = oci_config(&s).expect_err("unknown capability");
    assert!(err.to_string().contains("NET_FLY"), "{err}");
    Ok(())
}

#[test]
fn confined_and_privileged_containers() -> Result<(), BundleError> {
    let mut s = spec();
    s.read_only_rootfs = true;
    s.hostname = Some("web-0".into());
    s.cgroups_path = Some("/shoal/n1/pod-u/c1".into());
    s.namespaces.network = Namespace::Join(PathBuf::from("/run/netns/pod"));
    s.mounts.push(Mount::bind("/data", "/srv/data", true));
    s.mounts.push(Mount::tmpfs("/scratch", Some(1 << 20)));
    let c = oci_config(&s)?;
    let json = serde_json::to_value(&c).map_err(|e| BundleError::Invalid {
        container: "c1".into(),
        reason: e.to_string(),
    })?;
    assert_eq!(json["root"]["readonly"], true);
    assert_eq!(json["hostname"], "web-0");
    assert_eq!(json["process"]["terminal"], false);
    assert_eq!(json["linux"]["cgroupsPath"], "/shoal/n1/pod-u/c1");
    assert!(json["linux"]["seccomp"]["syscalls"].is_array());
    assert!(
        json["linux"]["maskedPaths"]
            .as_array()
            .is_some_and(|m| m.iter().any(|p| p == "/proc/kcore"))
    );
    let net = json["linux"]["namespaces"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["type"] == "network").cloned());
    assert_eq!(
        net.map(|n| n["path"].clone()),
        Some("/run/netns/pod".into())
    );
    let data = json["mounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["destination"] == "/data").cloned());
    assert_eq!(
        data.map(|m| m["options"].clone()),
        Some(serde_json::json!(["rbind", "rprivate", "ro"]))
    );

    s.privileged = true;
    s.namespaces.uts = Namespace::Host;
    let c = oci_config(&s)?;
    assert!(caps(&c).contains(&Capability::SysAdmin));
    let linux = c.linux().as_ref().expect("linux section");
    assert!(linux.seccomp().is_none());
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert!(
        c.hostname().is_none(),
        "no hostname in the host's UTS namespace"
    );
    assert!(
        !linux
            .namespaces()
            .as_ref()
            .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Uts))
    );

    s.privileged = false;
    s.seccomp = Seccomp::Unconfined;
    s.cgroups_path = Some("relative/path".into());
    let err = oci_config(&s).expect_err("relative cgroups path");
    assert!(err.to_string().contains("must be absolute"), "{err}");
    Ok(())
}
