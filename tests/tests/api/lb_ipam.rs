//! LoadBalancer IPAM as a user meets it with kubectl: a Service of type
//! LoadBalancer gets an address of each of its families from the pools in
//! `status.loadBalancer.ingress`, a full pool says so in a Warning event
//! and the Service gets the next address freed, changing the type or
//! deleting the Service frees its addresses, a requested address is given
//! when free, and a Service of another loadBalancerClass is left alone.

use std::net::IpAddr;

use anyhow::{Result, ensure};
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
};

/// Two usable addresses per family: the pools' first and last are skipped.
const POOL_V4: &str = "10.250.0.0/30";
const POOL_V6: &str = "fd00:10:250::/126";

fn service(name: &str, extra_spec: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: lb\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n{extra_spec}"
    )
}

/// The (ip, ipMode) pairs of a Service's ingress.
fn ingress(svc: &Value) -> Vec<(String, String)> {
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| {
            let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            (s("ip"), s("ipMode"))
        })
        .collect()
}

/// Waits until `name` has exactly `count` ingress addresses and returns them.
async fn addresses(cp: &ControlPlane, name: &str, count: usize) -> Result<Vec<IpAddr>> {
    let svc = wait_for(
        cp,
        &["service", name, "-n", "lb"],
        &format!("service lb/{name} with {count} LoadBalancer addresses"),
        |svc| {
            let got = ingress(svc);
            if got.len() == count {
                Ok(())
            } else {
                Err(format!("ingress {got:?}"))
            }
        },
    )
    .await?;
    let mut out = Vec::new();
    for (ip, mode) in ingress(&svc) {
        ensure!(mode == "VIP", "service {name}: ipMode {mode:?}, want VIP");
        out.push(ip.parse()?);
    }
    Ok(out)
}

fn in_pool(ip: &IpAddr) -> bool {
    let usable_v4: [IpAddr; 2] = [[10, 250, 0, 1].into(), [10, 250, 0, 2].into()];
    let usable_v6: [IpAddr; 2] = [
        "fd00:10:250::1".parse().unwrap_or(usable_v4[0]),
        "fd00:10:250::2".parse().unwrap_or(usable_v4[0]),
    ];
    usable_v4.contains(ip) || usable_v6.contains(ip)
}

/// The Warning events about a Service: (reason, message).
async fn warnings(cp: &ControlPlane, name: &str) -> Result<Vec<(String, String)>> {
    let events = get_json(
        cp,
        &[
            "events",
            "-n",
            "lb",
            "--field-selector",
            &format!("involvedObject.name={name},type=Warning"),
        ],
    )
    .await?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_owned(),
                e["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

async fn wait_for_warning(cp: &ControlPlane, name: &str, needle: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + super::endpointslice::CATCH_UP;
    loop {
        let found = warnings(cp, name).await?;
        if found
            .iter()
            .any(|(r, m)| r == "AllocationFailed" && m.contains(needle))
        {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "service lb/{name}: no AllocationFailed event saying {needle:?}; warnings: {found:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_get_pool_addresses_and_give_them_back() -> Result<()> {
    let cp = ControlPlane::start_with(shoal_controllers::Config {
        lb_ipam: shoal_controllers::lb_ipam::Config {
            pools: vec![POOL_V4.parse()?, POOL_V6.parse()?],
        },
        ..shoal_controllers::Config::default()
    })
    .await?;
    cp.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: lb}\n"),
    )
    .await?;
    // Another implementation's Service: never touched.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&service(
            "other",
            "  loadBalancerClass: example.com/metal\n",
            "",
        )),
    )
    .await?;
    cp.ok(&["apply", "-f", "-"], Some(&service("single", "", "")))
        .await?;
    cp.ok(
        &["apply", "-f", "-"],
        Some(&service("dual", "  ipFamilyPolicy: PreferDualStack\n", "")),
    )
    .await?;
    let single = addresses(&cp, "single", 1).await?;
    let dual = addresses(&cp, "dual", 2).await?;
    ensure!(
        single[0].is_ipv4() && in_pool(&single[0]),
        "single-stack: {single:?}"
    );
    ensure!(
        dual[0].is_ipv4() && dual[1].is_ipv6() && dual.iter().all(in_pool),
        "dual-stack, IPv4 first as spec.ipFamilies: {dual:?}"
    );
    ensure!(
        single[0] != dual[0],
        "one address twice: {single:?} {dual:?}"
    );

    // The IPv4 pool is full: the third Service waits, and says why.
    cp.ok(&["apply", "-f", "-"], Some(&service("third", "", "")))
        .await?;
    wait_for_warning(
        &cp,
        "third",
        "no free IPv4 address left in the LoadBalancer pool 10.250.0.0/30 (2 in use)",
    )
    .await?;
    let third = get_json(&cp, &["service", "third", "-n", "lb"]).await?;
    ensure!(
        ingress(&third).is_empty(),
        "an exhausted pool gave an address: {third}"
    );

    // Deleting a Service frees its address for the one waiting.
    cp.ok(&["delete", "service", "single", "-n", "lb"], None)
        .await?;
    let third = addresses(&cp, "third", 1).await?;
    ensure!(third == single, "third got {third:?}, freed was {single:?}");

    // A Service that stops being a LoadBalancer loses its addresses, and
    // they go to the next one.
    cp.ok(
        &[
            "patch",
            "service",
            "dual",
            "-n",
            "lb",
            "--type=merge",
            "-p",
            r#"{"spec":{"type":"NodePort"}}"#,
        ],
        None,
    )
    .await?;
    addresses(&cp, "dual", 0).await?;
    // It asks for the address "dual" had, as MetalLB's users do.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&service(
            "fourth",
            "  ipFamilyPolicy: PreferDualStack\n",
            &format!("metallb.io/loadBalancerIPs: \"{}\"", dual[0]),
        )),
    )
    .await?;
    let fourth = addresses(&cp, "fourth", 2).await?;
    ensure!(
        fourth[0] == dual[0],
        "requested {}: got {fourth:?}",
        dual[0]
    );
    ensure!(fourth[1].is_ipv6() && in_pool(&fourth[1]), "{fourth:?}");

    // A requested address another Service holds is refused by name.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&service(
            "fifth",
            &format!("  loadBalancerIP: {}\n", third[0]),
            "",
        )),
    )
    .await?;
    wait_for_warning(
        &cp,
        "fifth",
        &format!(
            "requested address {} is already allocated to Service lb/third",
            third[0]
        ),
    )
    .await?;

    let other = get_json(&cp, &["service", "other", "-n", "lb"]).await?;
    ensure!(
        ingress(&other).is_empty(),
        "a Service of another loadBalancerClass got an address: {other}"
    );
    cp.stop().await
}
