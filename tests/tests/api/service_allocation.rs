//! Service cluster IPs and NodePorts with two API servers over one store,
//! as `shoal server --join` runs them: concurrent creates through both
//! never share an address or port, and a deleted Service frees its own.

use std::collections::HashSet;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::oneshot;

use super::{ControlPlane, free_addr};

/// Small enough that 200 Services fill most of it.
const CIDR: &str = "10.97.0.0/24";
const SERVICES: usize = 200;

async fn client(kubeconfig: &std::path::Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn node_port_service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("NodePort".into()),
            selector: Some([("app".to_string(), name.to_string())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec.as_ref()?.cluster_ip.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apiservers_never_hand_out_the_same_address_or_port() -> Result<()> {
    let cp = ControlPlane::start_configured(shoal_controllers::Config::default(), |c| {
        c.service_cidr_v4 = CIDR.into();
    })
    .await?;
    // A second API server over the same store, with its own data directory.
    let dir = tempfile::tempdir()?;
    let mut config =
        shoal_apiserver::Config::new(dir.path(), vec![format!("http://{}", cp.store_addr)]);
    config.listen = free_addr()?;
    config.service_cidr_v4 = CIDR.into();
    let second = shoal_apiserver::Apiserver::start(config)
        .await
        .context("starting the second apiserver")?;
    let second_kubeconfig = second.kubeconfig().to_path_buf();
    let (stop_second, rx) = oneshot::channel::<()>();
    let second_task = tokio::spawn(second.serve(async {
        let _ = rx.await;
    }));

    let clients = [
        client(&cp.kubeconfig).await?,
        client(&second_kubeconfig).await?,
    ];
    // Both wait for the other's writes only through the store.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..SERVICES {
        let api: Api<Service> = Api::namespaced(clients[i % 2].clone(), "default");
        creates.spawn(async move {
            api.create(&PostParams::default(), &node_port_service(&format!("s{i}")))
                .await
                .with_context(|| format!("creating Service s{i}"))
        });
    }
    let mut created = Vec::new();
    while let Some(done) = creates.join_next().await {
        created.push(done??);
    }

    let services: Api<Service> = Api::all(clients[0].clone());
    let all = services.list(&ListParams::default()).await?.items;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for svc in &all {
        let name = svc.metadata.name.clone().unwrap_or_default();
        if let Some(ip) = cluster_ip(svc).filter(|ip| ip != "None") {
            ensure!(
                ips.insert(ip.clone()),
                "cluster IP {ip} handed out twice (again to {name})"
            );
        }
        for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            if let Some(p) = port.node_port {
                ensure!(
                    ports.insert(p),
                    "NodePort {p} handed out twice (again to {name})"
                );
            }
        }
    }
    ensure!(
        created.len() == SERVICES && ips.len() >= SERVICES && ports.len() == SERVICES,
        "{} created, {} distinct cluster IPs, {} distinct NodePorts",
        created.len(),
        ips.len(),
        ports.len()
    );

    // Deleting a Service through one server frees its address: the other
    // refuses it while it is held, then hands it out again.
    let default: [Api<Service>; 2] = [
        Api::namespaced(clients[0].clone(), "default"),
        Api::namespaced(clients[1].clone(), "default"),
    ];
    let freed = cluster_ip(&created[0]).context("the first Service has no cluster IP")?;
    let mut wanted = node_port_service("reuse");
    if let Some(spec) = wanted.spec.as_mut() {
        spec.cluster_ip = Some(freed.clone());
    }
    match default[0].create(&PostParams::default(), &wanted).await {
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("already allocated") => {}
        other => anyhow::bail!("creating a Service on held address {freed}: {other:?}"),
    }
    let victim = created[0].metadata.name.clone().unwrap_or_default();
    default[1].delete(&victim, &DeleteParams::default()).await?;
    // The other server frees it once its cache has seen the deletion.
    let deadline = tokio::time::Instant::now() + super::WAIT;
    let reused = loop {
        match default[0].create(&PostParams::default(), &wanted).await {
            Ok(svc) => break svc,
            Err(kube::Error::Api(s)) if s.code == 422 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("reusing freed address {freed}: {e}"),
        }
    };
    ensure!(
        cluster_ip(&reused).as_deref() == Some(freed.as_str()),
        "the freed address {freed} was not reused: {:?}",
        cluster_ip(&reused)
    );

    // Open client connections would hold the servers' graceful shutdown.
    drop((clients, default, services));
    let _ = stop_second.send(());
    second_task.await??;
    cp.stop().await
}
