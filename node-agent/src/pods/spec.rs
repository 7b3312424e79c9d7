//! A pod's container as the runtime takes it: environment (values,
//! `valueFrom`, `envFrom`), identity, security context, resources and
//! mounts, resolved the kubelet's way.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use shoal_runtime::{
    CapabilityChanges, ContainerSpec, Image, Mount, Namespace, Resources, Seccomp, resolve_process,
    resolve_user,
};

use super::Ctx;

/// Why a container could not be described: the kubelet's
/// `CreateContainerConfigError`, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub String);

/// ConfigMaps and Secrets a pod reads, taken once per start (or volume
/// resync) from the node's watched copies.
#[derive(Default)]
pub(crate) struct Sources {
    config_maps: BTreeMap<String, Option<Arc<ConfigMap>>>,
    secrets: BTreeMap<String, Option<Arc<Secret>>>,
}

impl Sources {
    pub async fn config_map(&mut self, ctx: &Ctx, ns: &str, name: &str) -> Option<&ConfigMap> {
        if !self.config_maps.contains_key(name) {
            let got = ctx.config_maps.get(ns, name).await;
            self.config_maps.insert(name.to_owned(), got);
        }
        self.config_maps.get(name).and_then(Option::as_deref)
    }

    pub async fn secret(&mut self, ctx: &Ctx, ns: &str, name: &str) -> Option<&Secret> {
        if !self.secrets.contains_key(name) {
            let got = ctx.secrets.get(ns, name).await;
            self.secrets.insert(name.to_owned(), got);
        }
        self.secrets.get(name).and_then(Option::as_deref)
    }
}

/// A secret's value as text (the API hands bytes).
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| secret.string_data.as_ref()?.get(key).cloned())
}

/// A `fieldRef` path's value for this pod.
pub(crate) fn field_value(
    pod: &Pod,
    path: &str,
    pod_ips: &[IpAddr],
    host_ips: &[IpAddr],
) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let first = |ips: &[IpAddr]| ips.first().map(ToString::to_string).unwrap_or_default();
    let all = |ips: &[IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        "status.podIP" => first(pod_ips),
        "status.podIPs" => all(pod_ips),
        "status.hostIP" => first(host_ips),
        "status.hostIPs" => all(host_ips),
        p => {
            let (map, key) = if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|r| r.strip_suffix("']"))
            {
                (meta.labels.as_ref(), k)
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|r| r.strip_suffix("']"))
            {
                (meta.annotations.as_ref(), k)
            } else {
                return None;
            };
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        }
    })
}

/// A `resourceFieldRef` value: the container's request or limit, in the
/// divisor's units (rounded up, as the kubelet does).
fn resource_value(c: &Container, resource: &str, divisor: Option<&str>) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let res = c.resources.as_ref();
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return None,
    };
    let value = map
        .and_then(|m| m.get(name))
        .and_then(|q| shoal_api::parse_quantity(&q.0))
        .unwrap_or(0.0);
    let divisor = divisor.and_then(shoal_api::parse_quantity).unwrap_or(1.0);
    if divisor <= 0.0 {
        return None;
    }
    Some(format!("{}", (value / divisor).ceil() as i64))
}

/// The container's environment: `envFrom` first, then `env`, later keys
/// replacing earlier ones, as the kubelet builds it.
pub(crate) async fn environment(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    pod_ips: &[IpAddr],
    sources: &mut Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |k: String, v: String, env: &mut Vec<(String, String)>| match env
        .iter_mut()
        .find(|(key, _)| *key == k)
    {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match sources.config_map(ctx, &ns, &r.name).await {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(format!("{prefix}{k}"), v.clone(), &mut env);
                    }
                }
                None if optional => {}
                None => {
                    return Err(ConfigError(format!(
                        "configmap \"{}\" not found (envFrom of container {:?})",
                        r.name, c.name
                    )));
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match sources.secret(ctx, &ns, &r.name).await {
                Some(s) => {
                    let keys: Vec<String> =
                        s.data.iter().flatten().map(|(k, _)| k.clone()).collect();
                    for k in keys {
                        if let Some(v) = secret_value(s, &k) {
                            set(format!("{prefix}{k}"), v, &mut env);
                        }
                    }
                }
                None if optional => {}
                None => {
                    return Err(ConfigError(format!(
                        "secret \"{}\" not found (envFrom of container {:?})",
                        r.name, c.name
                    )));
                }
            }
        }
    }
    let host_ips = &ctx.cfg.node_ips;
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            // `$(VAR)` in values refers to variables defined before it.
            let known: BTreeMap<&str, &str> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            shoal_runtime::expand_kubernetes_vars(v, |k| known.get(k).copied())
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path, pod_ips, host_ips).ok_or_else(|| {
                    ConfigError(format!(
                        "env {:?} of container {:?}: unsupported fieldRef {:?}",
                        var.name, c.name, f.field_path
                    ))
                })?
            } else if let Some(r) = &from.resource_field_ref {
                let target = match r.container_name.as_deref() {
                    Some(name) if name != c.name => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|x| x.name == name))
                        .unwrap_or(c),
                    _ => c,
                };
                resource_value(
                    target,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                )
                .ok_or_else(|| {
                    ConfigError(format!(
                        "env {:?} of container {:?}: unsupported resourceFieldRef {:?}",
                        var.name, c.name, r.resource
                    ))
                })?
            } else if let Some(r) = &from.config_map_key_ref {
                match sources
                    .config_map(ctx, &ns, &r.name)
                    .await
                    .and_then(|cm| cm.data.as_ref()?.get(&r.key).cloned())
                {
                    Some(v) => v,
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in ConfigMap {ns}/{} (env {:?} of container {:?})",
                            r.key, r.name, var.name, c.name
                        )));
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources
                    .secret(ctx, &ns, &r.name)
                    .await
                    .and_then(|s| secret_value(s, &r.key))
                {
                    Some(v) => v,
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in Secret {ns}/{} (env {:?} of container {:?})",
                            r.key, r.name, var.name, c.name
                        )));
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(var.name.clone(), value, &mut env);
    }
    Ok(env)
}

/// Millicores of a CPU quantity, bytes of a memory quantity.
fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    name: &str,
    scale: f64,
) -> Option<u64> {
    map?.get(name)
        .and_then(|q| shoal_api::parse_quantity(&q.0))
        .map(|v| (v * scale).ceil().max(0.0) as u64)
}

/// What a container start needs that the worker knows.
pub(crate) struct Placement<'a> {
    pub id: &'a str,
    pub netns: Option<&'a std::path::Path>,
    pub hostname: &'a str,
    pub cgroups_path: String,
    pub mounts: Vec<Mount>,
}

/// Describes container `c` of `pod` for the runtime.
pub(crate) fn build(
    pod: &Pod,
    c: &Container,
    image: &Image,
    rootfs: std::path::PathBuf,
    env: &[(String, String)],
    at: Placement<'_>,
) -> Result<ContainerSpec, ConfigError> {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let hostname = if host_network {
        None
    } else {
        Some(at.hostname)
    };
    let process = resolve_process(
        &c.name,
        image.config(),
        c.command.as_deref().unwrap_or_default(),
        c.args.as_deref().unwrap_or_default(),
        env,
        hostname,
    )
    .map_err(|e| ConfigError(e.to_string()))?;
    let pod_sc = spec.and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user))
        .and_then(|u| u32::try_from(u).ok());
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
        .and_then(|g| u32::try_from(g).ok());
    let supplemental: Vec<u32> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    let user = resolve_user(
        &rootfs,
        image.config().user.as_deref(),
        run_as_user,
        run_as_group,
        &supplemental,
    )
    .map_err(|e| ConfigError(format!("container {:?}: {e}", c.name)))?;
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if run_as_non_root && user.uid == 0 {
        return Err(ConfigError(format!(
            "container {:?} has runAsNonRoot and image will run as root; set runAsUser",
            c.name
        )));
    }

    let mut out = ContainerSpec::new(at.id, rootfs, process.args);
    out.env = process.env;
    out.user = user;
    out.cwd = c
        .working_dir
        .clone()
        .or_else(|| image.config().working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    out.hostname = hostname.map(str::to_owned);
    out.namespaces.network = match at.netns {
        Some(path) if !host_network => Namespace::Join(path.to_path_buf()),
        _ => Namespace::Host,
    };
    out.namespaces.uts = if host_network {
        Namespace::Host
    } else {
        Namespace::New
    };
    out.cgroups_path = Some(at.cgroups_path);
    out.mounts = at.mounts;
    out.read_only_rootfs = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    out.privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    if let Some(caps) = sc.and_then(|s| s.capabilities.as_ref()) {
        out.capabilities = CapabilityChanges {
            add: caps.add.clone().unwrap_or_default(),
            drop: caps.drop.clone().unwrap_or_default(),
        };
    }
    out.no_new_privileges = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(pod_sc.and_then(|s| s.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str());
    // shoal runs RuntimeDefault unless a pod asks for Unconfined (the
    // kubelet's --seccomp-default).
    out.seccomp = match seccomp {
        Some("Unconfined") => Seccomp::Unconfined,
        _ => Seccomp::RuntimeDefault,
    };
    out.unmasked_proc = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    let res = c.resources.as_ref();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    out.resources = Resources::from_kubernetes(
        quantity(requests, "cpu", 1000.0).or(quantity(limits, "cpu", 1000.0)),
        quantity(limits, "cpu", 1000.0),
        quantity(limits, "memory", 1.0),
    );
    for sysctl in pod_sc.and_then(|s| s.sysctls.clone()).unwrap_or_default() {
        out.sysctls.insert(sysctl.name, sysctl.value);
    }
    out.annotations.insert(
        "io.kubernetes.pod.name".to_owned(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    out.annotations.insert(
        "io.kubernetes.pod.namespace".to_owned(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    out.annotations
        .insert("io.kubernetes.container.name".to_owned(), c.name.clone());
    Ok(out)
}
