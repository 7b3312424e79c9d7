//! The apiserver compacts the store's history like kube-apiserver
//! (`--etcd-compaction-interval`): old revisions go, current objects and
//! every API read and watch keep working.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use etcd_client::GetOptions;

use super::ControlPlane;

const KEY: &str = "/registry/configmaps/default/counter";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_history_is_compacted_and_the_api_keeps_serving() -> Result<()> {
    let cp = ControlPlane::start_configured(Default::default(), |api| {
        api.compaction_interval = Some(Duration::from_millis(500));
    })
    .await?;
    cp.ok(
        &["create", "configmap", "counter", "--from-literal=n=0"],
        None,
    )
    .await?;
    let mut etcd = etcd_client::Client::connect([format!("http://{}", cp.store_addr)], None)
        .await
        .context("connecting to the store")?;
    let first = etcd
        .get(KEY, None)
        .await?
        .kvs()
        .first()
        .map(|kv| kv.mod_revision())
        .context("the ConfigMap is not in the store")?;
    for n in 1..=3 {
        cp.ok(
            &[
                "patch",
                "configmap",
                "counter",
                "-p",
                &format!(r#"{{"data":{{"n":"{n}"}}}}"#),
            ],
            None,
        )
        .await?;
    }

    // Within a few rounds the first version is gone from the store's
    // history, with etcd's error for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match etcd
            .get(KEY, Some(GetOptions::new().with_revision(first)))
            .await
        {
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                break;
            }
            Err(e) => bail!("reading revision {first}: {e}"),
            Ok(_) if tokio::time::Instant::now() > deadline => {
                bail!("revision {first} was still readable 20 s later: nothing compacts")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // kube-apiserver's bookkeeping key, so apiservers over one store take
    // turns.
    let rounds = etcd
        .get("compact_rev_key", None)
        .await?
        .kvs()
        .first()
        .map(|kv| kv.version())
        .context("compact_rev_key is not in the store")?;
    ensure!(rounds >= 2, "compact_rev_key has version {rounds}");

    // The object is intact and the API reads, writes and watches it.
    let n = cp
        .ok(
            &["get", "configmap", "counter", "-o", "jsonpath={.data.n}"],
            None,
        )
        .await?;
    ensure!(n == "3", "the ConfigMap holds n={n:?} after compaction");
    cp.ok(
        &[
            "patch",
            "configmap",
            "counter",
            "-p",
            r#"{"data":{"n":"4"}}"#,
        ],
        None,
    )
    .await?;
    let watched = cp
        .ok(
            &[
                "get",
                "--raw",
                "/api/v1/namespaces/default/configmaps?watch=1&fieldSelector=metadata.name%3Dcounter&timeoutSeconds=1",
            ],
            None,
        )
        .await?;
    ensure!(
        watched.contains(r#""n":"4""#),
        "a watch after compaction did not list the ConfigMap: {watched}"
    );
    Ok(())
}
