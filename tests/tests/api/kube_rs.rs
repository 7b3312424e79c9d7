//! kube-rs, the Rust client, as a controller author drives it: typed
//! verbs on ConfigMaps and Deployments, the runtime's watcher, watches
//! resumed from a resourceVersion, and 410 Gone where a revision is out
//! of reach (older than the watch window, or compacted under a paged list).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde_json::json;

use super::ControlPlane;

/// How long a test waits for any one event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// A client from the admin kubeconfig, as a program outside the cluster
/// builds one.
async fn client(cp: &ControlPlane) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig)
        .with_context(|| format!("reading {}", cp.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("the kubeconfig the API server wrote")?;
    Ok(Client::try_from(config)?)
}

/// Creates a namespace and returns the ConfigMap and Deployment APIs in it,
/// once the root CA publisher has put `kube-root-ca.crt` there (as in
/// Kubernetes, every namespace holds that ConfigMap; waiting keeps it out
/// of the watches the tests make).
async fn namespace(client: &Client, name: &str) -> Result<(Api<ConfigMap>, Api<Deployment>)> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cms.get_opt(ROOT_CA).await?.is_none() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "namespace {name} got no {ROOT_CA} ConfigMap in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((cms, Api::namespaced(client.clone(), name)))
}

/// The ConfigMap the root CA publisher keeps in every namespace.
const ROOT_CA: &str = "kube-root-ca.crt";

fn configmap(name: &str, data: serde_json::Value) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "data": data,
    }))?)
}

fn deployment(name: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "web", "image": "busybox:1.36", "command": ["httpd", "-f"]},
                    {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "1d"]},
                ]},
            },
        },
    }))?)
}

/// The API error a call failed with (code and reason), or why it did not fail so.
fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> Result<(u16, String, String)> {
    match r {
        Err(kube::Error::Api(s)) => Ok((s.code, s.reason.clone(), s.message.clone())),
        Err(e) => bail!("expected an API error, got {e}"),
        Ok(v) => bail!("expected an API error, got {v:?}"),
    }
}

/// The next item of a stream, or an error after `EVENT_WAIT`.
async fn next<S: Stream + Unpin>(s: &mut S, waiting_for: &str) -> Result<S::Item> {
    tokio::time::timeout(EVENT_WAIT, s.next())
        .await
        .with_context(|| format!("no event in {EVENT_WAIT:?} while waiting for {waiting_for}"))?
        .with_context(|| format!("the stream ended while waiting for {waiting_for}"))
}

fn data(cm: &ConfigMap, key: &str) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_get_list_patch_and_delete() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client(&cp).await?;
    let (cms, deps) = namespace(&client, "kube-rs").await?;

    // ConfigMaps.
    let created = cms
        .create(&PostParams::default(), &configmap("a", json!({"k": "1"}))?)
        .await?;
    ensure!(
        created.uid().is_some() && created.resource_version().is_some(),
        "create returned no uid or resourceVersion: {:?}",
        created.metadata
    );
    cms.create(&PostParams::default(), &configmap("b", json!({"k": "2"}))?)
        .await?;
    let mut unlabelled = configmap("c", json!({}))?;
    unlabelled.metadata.labels = None;
    cms.create(&PostParams::default(), &unlabelled).await?;
    let got = cms.get("a").await?;
    ensure!(data(&got, "k") == "1", "get a: {:?}", got.data);
    let listed: Vec<String> = cms
        .list(&ListParams::default().labels("app=kube-rs"))
        .await?
        .iter()
        .map(|c| c.name_any())
        .collect();
    ensure!(
        listed == ["a", "b"],
        "list with app=kube-rs gave {listed:?}"
    );
    let merged = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "merged", "extra": "x"}})),
        )
        .await?;
    ensure!(
        data(&merged, "k") == "merged" && data(&merged, "extra") == "x",
        "merge patch gave {:?}",
        merged.data
    );
    // Server-side apply as controllers use it: create-or-update by field manager.
    let applied = cms
        .patch(
            "applied",
            &PatchParams::apply("kube-rs-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "applied"}, "data": {"k": "v1"},
            })),
        )
        .await?;
    ensure!(
        data(&applied, "k") == "v1",
        "apply created {:?}",
        applied.data
    );
    let reapplied = cms
        .patch(
            "applied",
            &PatchParams::apply("kube-rs-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "applied"}, "data": {"k": "v2"},
            })),
        )
        .await?;
    ensure!(
        data(&reapplied, "k") == "v2",
        "apply updated to {:?}",
        reapplied.data
    );
    // A write from a stale resourceVersion is a conflict.
    let mut stale = got.clone();
    stale.data = Some([("k".to_string(), "stale".to_string())].into());
    let (code, reason, _) = api_error(cms.replace("a", &PostParams::default(), &stale).await)?;
    ensure!(
        code == 409 && reason == "Conflict",
        "a replace from a stale resourceVersion answered {code} {reason}"
    );

    // Deployments.
    let dep = deps
        .create(&PostParams::default(), &deployment("web")?)
        .await?;
    let spec = dep.spec.as_ref().context("a deployment without spec")?;
    ensure!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("RollingUpdate")
            && spec.revision_history_limit == Some(10),
        "the server's defaults are missing: {spec:?}"
    );
    let patched = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 3, "template": {"spec": {
                "containers": [{"name": "web", "image": "busybox:1.37"}]
            }}}})),
        )
        .await?;
    let spec = patched.spec.as_ref().context("a deployment without spec")?;
    let images: Vec<(String, Option<String>)> = spec
        .template
        .spec
        .as_ref()
        .map(|p| {
            p.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone()))
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        spec.replicas == Some(3)
            && images
                == [
                    ("web".into(), Some("busybox:1.37".into())),
                    ("sidecar".into(), Some("busybox:1.36".into())),
                ],
        "strategic merge patch gave replicas {:?}, containers {images:?}",
        spec.replicas
    );
    ensure!(
        patched.metadata.generation == Some(2),
        "generation after a spec change: {:?}",
        patched.metadata.generation
    );
    let listed = deps.list(&ListParams::default()).await?;
    ensure!(
        listed.items.len() == 1,
        "{} deployments listed",
        listed.items.len()
    );

    // Deletes, and what a read of the deleted object says.
    deps.delete("web", &DeleteParams::default()).await?;
    cms.delete("a", &DeleteParams::default()).await?;
    let (code, reason, _) = api_error(cms.get("a").await)?;
    ensure!(
        code == 404 && reason == "NotFound",
        "get after delete: {code} {reason}"
    );
    ensure!(
        deps.get_opt("web").await?.is_none(),
        "the deployment is still there"
    );
    let (code, _, _) = api_error(cms.delete("a", &DeleteParams::default()).await)?;
    ensure!(code == 404, "a second delete answered {code}");
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_sees_changes_made_after_it_started() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client(&cp).await?;
    let (cms, _) = namespace(&client, "kube-rs").await?;
    cms.create(&PostParams::default(), &configmap("early", json!({}))?)
        .await?;

    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match next(&mut events, "the initial list").await?? {
            watcher::Event::Init => {}
            watcher::Event::InitApply(cm) => initial.push(cm.name_any()),
            watcher::Event::InitDone => break,
            other => bail!("{other:?} before the initial list was done"),
        }
    }
    ensure!(
        initial == ["early", ROOT_CA],
        "the initial list had {initial:?}"
    );

    cms.create(
        &PostParams::default(),
        &configmap("late", json!({"n": "1"}))?,
    )
    .await?;
    cms.patch(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"n": "2"}})),
    )
    .await?;
    cms.delete("late", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut events, "the watcher's events for `late`").await?? {
            watcher::Event::Apply(cm) => {
                seen.push(format!("apply {} n={}", cm.name_any(), data(&cm, "n")))
            }
            watcher::Event::Delete(cm) => seen.push(format!("delete {}", cm.name_any())),
            other => bail!("unexpected {other:?} after the initial list (seen {seen:?})"),
        }
    }
    ensure!(
        seen == ["apply late n=1", "apply late n=2", "delete late"],
        "the watcher saw {seen:?}"
    );
    drop(events);
    cp.stop().await
}

/// Every event of a watch from `rv` until the server ends it after
/// `secs`, as `TYPE name n=value` with each event's resourceVersion.
async fn watch_all(api: &Api<ConfigMap>, rv: &str, secs: u32) -> Result<Vec<(String, String)>> {
    let mut stream = api
        .watch(&WatchParams::default().timeout(secs), rv)
        .await?
        .boxed();
    let mut out = Vec::new();
    let deadline = Duration::from_secs(u64::from(secs) + 10);
    while let Some(ev) = tokio::time::timeout(deadline, stream.next())
        .await
        .with_context(|| format!("the watch from {rv} did not end after its {secs} s timeout"))?
    {
        let (ty, cm) = match ev? {
            WatchEvent::Added(cm) => ("ADDED", cm),
            WatchEvent::Modified(cm) => ("MODIFIED", cm),
            WatchEvent::Deleted(cm) => ("DELETED", cm),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(s) => bail!("the watch from {rv} failed: {} {}", s.code, s.message),
        };
        out.push((
            format!("{ty} {} n={}", cm.name_any(), data(&cm, "n")),
            cm.resource_version().unwrap_or_default(),
        ));
    }
    Ok(out)
}

fn names(events: &[(String, String)]) -> Vec<&str> {
    events.iter().map(|(e, _)| e.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_resource_version_gets_exactly_the_changes_after_it() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client(&cp).await?;
    let (cms, _) = namespace(&client, "kube-rs").await?;
    cms.create(
        &PostParams::default(),
        &configmap("before", json!({"n": "0"}))?,
    )
    .await?;
    let start = cms
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("a list without resourceVersion")?;

    cms.create(&PostParams::default(), &configmap("a", json!({"n": "1"}))?)
        .await?;
    let a2 = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": "2"}})),
        )
        .await?
        .resource_version()
        .context("a patch without resourceVersion")?;
    cms.create(&PostParams::default(), &configmap("b", json!({"n": "3"}))?)
        .await?;
    cms.delete("a", &DeleteParams::default()).await?;

    // All from the list's revision: every change after it, in order, and
    // nothing from before it.
    let (from_start, from_a2) = tokio::join!(watch_all(&cms, &start, 2), watch_all(&cms, &a2, 2));
    let (from_start, from_a2) = (from_start?, from_a2?);
    let want = [
        "ADDED a n=1",
        "MODIFIED a n=2",
        "ADDED b n=3",
        "DELETED a n=2",
    ];
    ensure!(
        names(&from_start) == want,
        "the watch from the list's resourceVersion {start} saw {from_start:?}, not {want:?}"
    );
    let revs: Vec<i64> = from_start
        .iter()
        .map(|(_, rv)| rv.parse().unwrap_or(0))
        .collect();
    let start_rev: i64 = start.parse()?;
    ensure!(
        revs.first().is_some_and(|r| *r > start_rev) && revs.windows(2).all(|w| w[0] < w[1]),
        "event resourceVersions {revs:?} do not increase from {start}"
    );
    ensure!(
        names(&from_a2) == want[2..],
        "the watch resumed from {a2} (after the patch) saw {from_a2:?}, not {:?}",
        &want[2..]
    );
    // Resuming from the last event seen: nothing more happened.
    let last = &from_start[from_start.len() - 1].1;
    let from_last = watch_all(&cms, last, 1).await?;
    ensure!(
        from_last.is_empty(),
        "the watch resumed from the last event ({last}) saw {from_last:?}"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_out_of_reach_are_410_gone() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client(&cp).await?;
    let (cms, _) = namespace(&client, "kube-rs").await?;

    // A watch from before the API server's watch window (it starts where
    // the cache loaded, after bootstrap) ends with an Expired error event.
    let mut stream = cms.watch(&WatchParams::default(), "1").await?.boxed();
    let status = loop {
        match next(&mut stream, "the watch from resourceVersion 1").await?? {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(s) => break s,
            other => bail!("a watch from resourceVersion 1 sent {other:?}, not 410 Gone"),
        }
    };
    ensure!(
        status.code == 410 && status.reason == "Expired",
        "a watch from resourceVersion 1 failed with {} {}, not 410 Expired",
        status.code,
        status.reason
    );
    ensure!(
        status.message.contains("too old resource version"),
        "410 message: {}",
        status.message
    );
    drop(stream);

    // A paged list whose continue token names a compacted revision.
    for i in 0..3 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("p-{i}"), json!({}))?,
        )
        .await?;
    }
    let page1 = cms.list(&ListParams::default().limit(1)).await?;
    let token1 = page1
        .metadata
        .continue_
        .clone()
        .context("the first page of 4 with limit=1 has no continue token")?;
    // kube-root-ca.crt sorts first: 3 more after it.
    ensure!(
        page1.metadata.remaining_item_count == Some(3),
        "remainingItemCount {:?}",
        page1.metadata.remaining_item_count
    );
    let page2 = cms
        .list(&ListParams::default().limit(1).continue_token(&token1))
        .await?;
    let token2 = page2
        .metadata
        .continue_
        .clone()
        .context("the second page has no continue token")?;
    ensure!(
        page2.items.len() == 1 && page2.items[0].name_any() == "p-0",
        "the second page: {:?}",
        page2.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    );
    cms.create(&PostParams::default(), &configmap("after", json!({}))?)
        .await?;
    let mut etcd = etcd_client::Client::connect([format!("http://{}", cp.store_addr)], None)
        .await
        .context("connecting to the store")?;
    let rev = etcd
        .get(
            "/registry/",
            Some(etcd_client::GetOptions::new().with_count_only()),
        )
        .await?
        .header()
        .map_or(0, |h| h.revision());
    etcd.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .with_context(|| format!("compacting the store at {rev}"))?;

    let (code, reason, message) = api_error(
        cms.list(&ListParams::default().limit(1).continue_token(&token2))
            .await,
    )?;
    ensure!(
        code == 410 && reason == "Expired",
        "a continue token from before the compaction answered {code} {reason}: {message}"
    );
    ensure!(
        message.contains("start a new list without the continue parameter"),
        "the 410 does not say what to do: {message}"
    );
    // What the 410 tells the user to do works: a fresh list, paged.
    let mut names = Vec::new();
    let mut token = None::<String>;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await?;
        names.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    ensure!(
        names == ["after", ROOT_CA, "p-0", "p-1", "p-2"],
        "a fresh paged list after the compaction gave {names:?}"
    );
    cp.stop().await
}

/// PUT without a resourceVersion asks for no precondition: writers racing
/// on one object all succeed (the apiserver redoes a write that lost the
/// race), while a stale resourceVersion still gets 409 Conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_replaces_racing_on_one_object_all_succeed() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client(&cp).await?;
    let (cms, _) = namespace(&client, "race").await?;
    let created = cms
        .create(
            &PostParams::default(),
            &configmap("shared", json!({"n": "0"}))?,
        )
        .await?;
    let writes = (0..16).map(|i| {
        let cms = cms.clone();
        async move {
            let cm = configmap("shared", json!({"n": i.to_string()}))?;
            cms.replace("shared", &PostParams::default(), &cm)
                .await
                .with_context(|| format!("unconditional replace {i}"))
        }
    });
    for result in futures_util::future::join_all(writes).await {
        result?;
    }
    let mut stale = created;
    stale.data = Some([("n".to_owned(), "stale".to_owned())].into());
    match cms.replace("shared", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => bail!("a replace with a stale resourceVersion: {other:?}"),
    }
}
