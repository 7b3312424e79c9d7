//! The official Python client (`kubernetes` from PyPI) as a Python user
//! drives it: `client.py` beside this file creates, lists by label,
//! patches, watches and deletes, and reads a 404 as an `ApiException`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail, ensure};

use super::ControlPlane;

/// How long the script may take (it needs about 2 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The virtualenv `cargo xtask setup` installs the client into.
fn python() -> Result<PathBuf> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                .join(".cargo")
        }
    };
    Ok(cargo_home.join("shoal/python/bin/python3"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_creates_lists_patches_watches_and_deletes() -> Result<()> {
    let python = python()?;
    let present = std::process::Command::new(&python)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(
        present,
        "the Python kubernetes client is missing from {}: run `cargo xtask setup`",
        python.display()
    );
    let cp = ControlPlane::start().await?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/client.py");
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&cp.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("client.py did not finish in {SCRIPT_TIMEOUT:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stdout.lines().last() != Some("PASS") {
        bail!(
            "client.py failed ({}):\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status
        );
    }
    cp.stop().await
}
