//! A pod's files on the node: `/etc/hosts`, `/etc/resolv.conf` and
//! `/etc/hostname` as the kubelet writes them, and its volumes. ConfigMap,
//! Secret, downward API and projected volumes are written the way
//! Kubernetes' atomic writer does: the content lives in a timestamped
//! directory, `..data` points at it, and each visible name is a link
//! through `..data`, so a running container sees an update switch all at
//! once.

use std::{
    collections::BTreeMap,
    io::Write,
    net::IpAddr,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount, Volume},
};
use kube::Api;
use shoal_runtime::Mount;

use super::{
    Ctx, safe_join,
    spec::{ConfigError, Sources, field_value},
};

/// The hostname a pod's containers see: `spec.hostname` or the pod name.
pub(crate) fn hostname(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
}

/// Writes `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` for the pod
/// under `dir` and returns their mounts.
pub(crate) fn write_etc(
    ctx: &Ctx,
    pod: &Pod,
    dir: &Path,
    pod_ips: &[IpAddr],
) -> std::io::Result<Vec<Mount>> {
    std::fs::create_dir_all(dir)?;
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let host = hostname(pod);
    let fqdn = spec
        .and_then(|s| s.subdomain.as_ref())
        .map(|sub| format!("{host}.{sub}.{ns}.svc.{}", ctx.cfg.cluster_domain));

    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        match &fqdn {
            Some(f) => hosts.push_str(&format!("{ip}\t{f}\t{host}\n")),
            None => hosts.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    for alias in spec
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default()
    {
        hosts.push_str(&format!(
            "{}\t{}\n",
            alias.ip,
            alias.hostnames.unwrap_or_default().join("\t")
        ));
    }
    write_file(&dir.join("hosts"), hosts.as_bytes(), 0o644)?;

    let policy = spec
        .and_then(|s| s.dns_policy.clone())
        .unwrap_or_else(|| "ClusterFirst".to_owned());
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let cluster = policy == "ClusterFirst" && !host_network || policy == "ClusterFirstWithHostNet";
    let mut nameservers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    if cluster {
        nameservers.extend(ctx.cfg.cluster_dns.iter().map(ToString::to_string));
        let d = &ctx.cfg.cluster_domain;
        searches.extend([format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()]);
        options.push("ndots:5".to_owned());
    } else if policy != "None" {
        // Default: the node's own resolver configuration.
        if let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("nameserver") => nameservers.extend(words.map(str::to_owned)),
                    Some("search") => searches.extend(words.map(str::to_owned)),
                    Some("options") => options.extend(words.map(str::to_owned)),
                    _ => {}
                }
            }
        }
    }
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        nameservers.extend(cfg.nameservers.clone().unwrap_or_default());
        searches.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.clone().unwrap_or_default() {
            let Some(name) = o.name else { continue };
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let mut resolv = String::new();
    if !searches.is_empty() {
        resolv.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for ns in nameservers.iter().take(3) {
        resolv.push_str(&format!("nameserver {ns}\n"));
    }
    if !options.is_empty() {
        resolv.push_str(&format!("options {}\n", options.join(" ")));
    }
    write_file(&dir.join("resolv.conf"), resolv.as_bytes(), 0o644)?;
    write_file(&dir.join("hostname"), format!("{host}\n").as_bytes(), 0o644)?;

    let mut mounts = vec![Mount::bind("/etc/hosts", dir.join("hosts"), false)];
    if !host_network || cluster {
        mounts.push(Mount::bind(
            "/etc/resolv.conf",
            dir.join("resolv.conf"),
            false,
        ));
    }
    if !host_network {
        mounts.push(Mount::bind("/etc/hostname", dir.join("hostname"), false));
    }
    Ok(mounts)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::rename(&tmp, path)
}

/// One file of a projected volume: relative path, content, mode.
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Makes every volume of the pod exist under `dir` and returns each
/// volume's host path. ConfigMap, Secret, downward API and projected
/// volumes are (re)written when their content changed.
pub(crate) async fn volumes(
    ctx: &Ctx,
    pod: &Pod,
    dir: &Path,
    pod_ips: &[IpAddr],
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut sources = Sources::default();
    let io = |name: &str, e: std::io::Error| ConfigError(format!("volume {name:?}: {e}"));
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let path = dir.join(&v.name);
        if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                let size = e
                    .size_limit
                    .as_ref()
                    .and_then(|q| shoal_api::parse_quantity(&q.0))
                    .map(|b| b.ceil().max(0.0) as u64);
                super::tmpfs::ensure(&path, size).map_err(|e| io(&v.name, e))?;
            } else {
                std::fs::create_dir_all(&path).map_err(|e| io(&v.name, e))?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| io(&v.name, e))?;
            out.insert(v.name.clone(), path);
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&p).map_err(|e| io(&v.name, e))?;
                }
                "FileOrCreate" if !p.exists() => {
                    std::fs::File::create(&p).map_err(|e| io(&v.name, e))?;
                }
                "Directory" if !p.is_dir() => {
                    return Err(ConfigError(format!(
                        "volume {:?}: hostPath type check failed: {} is not a directory",
                        v.name, h.path
                    )));
                }
                "File" if !p.is_file() => {
                    return Err(ConfigError(format!(
                        "volume {:?}: hostPath type check failed: {} is not a file",
                        v.name, h.path
                    )));
                }
                _ => {}
            }
            out.insert(v.name.clone(), p);
        } else if let Some(claim) = &v.persistent_volume_claim {
            let p = claim_path(ctx, &ns, &v.name, &claim.claim_name).await?;
            out.insert(v.name.clone(), p);
        } else if let Some(payload) = payload(ctx, pod, &ns, &v, pod_ips, &mut sources).await? {
            // Secrets and projected tokens stay in memory, as the kubelet
            // keeps them.
            if v.secret.is_some() || v.projected.is_some() {
                super::tmpfs::ensure(&path, None).map_err(|e| io(&v.name, e))?;
            }
            atomic_write(&path, &payload).map_err(|e| io(&v.name, e))?;
            out.insert(v.name.clone(), path);
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: this volume type is not supported by shoal yet (emptyDir, hostPath, persistentVolumeClaim of a hostPath or local volume, configMap, secret, downwardAPI and projected are)",
                v.name
            )));
        }
    }
    Ok(out)
}

/// The host directory of a pod's claim: its bound PersistentVolume's
/// `hostPath` (made if missing, as DirectoryOrCreate: the local-path
/// provisioner's volumes start that way) or `local` path (which must exist).
async fn claim_path(
    ctx: &Ctx,
    ns: &str,
    volume: &str,
    claim: &str,
) -> Result<PathBuf, ConfigError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let fail = |what: String| ConfigError(format!("volume {volume:?}: {what}"));
    let pvc = claims
        .get_opt(claim)
        .await
        .map_err(|e| fail(format!("reading persistentvolumeclaim {ns}/{claim}: {e}")))?
        .ok_or_else(|| fail(format!("persistentvolumeclaim \"{claim}\" not found")))?;
    let bound = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail(format!("persistentvolumeclaim \"{claim}\" is not bound")))?;
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = volumes
        .get_opt(&bound)
        .await
        .map_err(|e| fail(format!("reading persistentvolume {bound}: {e}")))?
        .ok_or_else(|| fail(format!("persistentvolume \"{bound}\" not found")))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = spec.host_path {
        let p = PathBuf::from(&h.path);
        std::fs::create_dir_all(&p).map_err(|e| {
            fail(format!(
                "persistentvolume {bound}: creating {}: {e}",
                h.path
            ))
        })?;
        return Ok(p);
    }
    if let Some(l) = spec.local {
        let p = PathBuf::from(&l.path);
        if !p.is_dir() {
            return Err(fail(format!(
                "persistentvolume {bound}: local path {} does not exist on this node",
                l.path
            )));
        }
        return Ok(p);
    }
    Err(fail(format!(
        "persistentvolume {bound}: only hostPath and local volumes are supported by shoal yet"
    )))
}

/// The files of a ConfigMap, Secret, downward API or projected volume;
/// `None` for other volume types.
async fn payload(
    ctx: &Ctx,
    pod: &Pod,
    ns: &str,
    v: &Volume,
    pod_ips: &[IpAddr],
    sources: &mut Sources,
) -> Result<Option<Payload>, ConfigError> {
    let mut files = Payload::new();
    if let Some(cm) = &v.config_map {
        object_files(
            ctx,
            ns,
            &v.name,
            ObjectSource {
                secret: false,
                name: &cm.name,
                items: cm.items.as_deref(),
                default_mode: cm.default_mode,
                optional: cm.optional,
            },
            sources,
            &mut files,
        )
        .await?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        object_files(
            ctx,
            ns,
            &v.name,
            ObjectSource {
                secret: true,
                name: &name,
                items: s.items.as_deref(),
                default_mode: s.default_mode,
                optional: s.optional,
            },
            sources,
            &mut files,
        )
        .await?;
    } else if let Some(d) = &v.downward_api {
        downward_files(
            ctx,
            pod,
            pod_ips,
            d.items.as_deref(),
            d.default_mode,
            &mut files,
        );
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                object_files(
                    ctx,
                    ns,
                    &v.name,
                    ObjectSource {
                        secret: false,
                        name: &cm.name,
                        items: cm.items.as_deref(),
                        default_mode: p.default_mode,
                        optional: cm.optional,
                    },
                    sources,
                    &mut files,
                )
                .await?;
            }
            if let Some(s) = &src.secret {
                object_files(
                    ctx,
                    ns,
                    &v.name,
                    ObjectSource {
                        secret: true,
                        name: &s.name,
                        items: s.items.as_deref(),
                        default_mode: p.default_mode,
                        optional: s.optional,
                    },
                    sources,
                    &mut files,
                )
                .await?;
            }
            if let Some(d) = &src.downward_api {
                downward_files(
                    ctx,
                    pod,
                    pod_ips,
                    d.items.as_deref(),
                    p.default_mode,
                    &mut files,
                );
            }
            if let Some(t) = &src.service_account_token {
                let token =
                    service_account_token(ctx, pod, t.audience.clone(), t.expiration_seconds)
                        .await?;
                files.insert(t.path.clone(), (token.into_bytes(), mode(p.default_mode)));
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(files))
}

/// The files of downward API items (fieldRef; resourceFieldRef is not
/// served yet).
fn downward_files(
    ctx: &Ctx,
    pod: &Pod,
    pod_ips: &[IpAddr],
    items: Option<&[k8s_openapi::api::core::v1::DownwardAPIVolumeFile]>,
    default_mode: Option<i32>,
    files: &mut Payload,
) {
    for item in items.unwrap_or_default() {
        if let Some(f) = &item.field_ref {
            let value =
                field_value(pod, &f.field_path, pod_ips, &ctx.cfg.node_ips).unwrap_or_default();
            files.insert(
                item.path.clone(),
                (value.into_bytes(), mode(item.mode.or(default_mode))),
            );
        }
    }
}

fn mode(m: Option<i32>) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644) & 0o7777
}

/// A ConfigMap or Secret whose keys a volume projects.
struct ObjectSource<'a> {
    secret: bool,
    name: &'a str,
    items: Option<&'a [KeyToPath]>,
    default_mode: Option<i32>,
    optional: Option<bool>,
}

async fn object_files(
    ctx: &Ctx,
    ns: &str,
    volume: &str,
    src: ObjectSource<'_>,
    sources: &mut Sources,
    files: &mut Payload,
) -> Result<(), ConfigError> {
    let what = if src.secret { "secret" } else { "configmap" };
    let all: Option<BTreeMap<String, Vec<u8>>> = if src.secret {
        sources.secret(ctx, ns, src.name).await.map(|secret| {
            secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect()
        })
    } else {
        sources.config_map(ctx, ns, src.name).await.map(|cm| {
            let text = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
            let binary = cm
                .binary_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()));
            text.chain(binary).collect()
        })
    };
    let Some(all) = all else {
        if src.optional.unwrap_or(false) {
            return Ok(());
        }
        return Err(ConfigError(format!(
            "volume {volume:?}: {what} \"{}\" not found",
            src.name
        )));
    };
    pick(
        volume,
        what,
        src.name,
        all,
        src.items,
        src.default_mode,
        files,
    )
}

fn pick(
    volume: &str,
    what: &str,
    name: &str,
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    files: &mut Payload,
) -> Result<(), ConfigError> {
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match all.get(&item.key) {
                    Some(data) => {
                        files.insert(
                            item.path.clone(),
                            (data.clone(), mode(item.mode.or(default_mode))),
                        );
                    }
                    None => {
                        return Err(ConfigError(format!(
                            "volume {volume:?}: {what} \"{name}\" has no key {:?}",
                            item.key
                        )));
                    }
                }
            }
        }
        _ => {
            for (k, data) in all {
                files.insert(k, (data, mode(default_mode)));
            }
        }
    }
    Ok(())
}

/// A token for the pod's service account, bound to the pod (TokenRequest).
async fn service_account_token(
    ctx: &Ctx,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.into_iter().collect::<Vec<_>>(),
            "expirationSeconds": expiration.unwrap_or(3607),
            "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod",
                "name": pod.metadata.name, "uid": pod.metadata.uid,
            }
        }
    });
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let request: TokenRequest = serde_json::from_value(request)
        .map_err(|e| ConfigError(format!("a TokenRequest for {ns}/{sa}: {e}")))?;
    let got = api
        .create_token_request(&sa, &Default::default(), &request)
        .await
        .map_err(|e| ConfigError(format!("a token for service account {ns}/{sa}: {e}")))?;
    Ok(got.status.map(|s| s.token).unwrap_or_default())
}

/// Writes `files` into `dir` as Kubernetes' atomic writer does; nothing
/// changes on disk when the content is the same.
pub(crate) fn atomic_write(dir: &Path, files: &Payload) -> std::io::Result<()> {
    if let Some(rel) = files.keys().find(|rel| safe_join(dir, rel).is_none()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("item path {rel:?} must be relative and stay inside the volume"),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current = dir.join(current);
        let same = files.iter().all(|(rel, (data, m))| {
            let p = current.join(rel);
            std::fs::read(&p).is_ok_and(|d| d == *data)
                && std::fs::metadata(&p).is_ok_and(|md| md.permissions().mode() & 0o7777 == *m)
        }) && count_files(&current) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let new = dir.join(&stamp);
    std::fs::create_dir_all(&new)?;
    for (rel, (data, m)) in files {
        let Some(path) = safe_join(&new, rel) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("item path {rel:?} must be relative and stay inside the volume"),
            ));
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*m))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&stamp, &tmp_link)?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link)?;
    // Visible names: one link per top-level entry, through `..data`.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_owned))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += count_files(&e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// The container's mounts for its `volumeMounts`.
pub(crate) fn volume_mounts(
    c: &k8s_openapi::api::core::v1::Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Mount>, ConfigError> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(base) = volumes.get(&m.name) else {
            return Err(ConfigError(format!(
                "container {:?}: volumeMount {:?} names no volume of the pod",
                c.name, m.name
            )));
        };
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = safe_join(base, sub).ok_or_else(|| {
                    ConfigError(format!(
                        "container {:?}: subPath {sub:?} must be relative and stay inside the volume",
                        c.name
                    ))
                })?;
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| {
                        ConfigError(format!("container {:?}: subPath {sub:?}: {e}", c.name))
                    })?;
                }
                p
            }
            None => base.clone(),
        };
        mounts.push(Mount::bind(
            m.mount_path.clone(),
            source,
            m.read_only.unwrap_or(false),
        ));
    }
    Ok(mounts)
}
