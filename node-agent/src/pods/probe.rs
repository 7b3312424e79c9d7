//! Container probes with the kubelet's semantics: startup first, then
//! liveness and readiness side by side, each with its delay, period,
//! timeout and thresholds. A prober runs per started container and tells
//! the pod worker about transitions only.

use std::{net::IpAddr, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use shoal_runtime::{ExecRequest, Runtime};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpStream, sync::mpsc};

/// What a prober reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeEvent {
    /// The startup probe succeeded (or there is none): liveness and
    /// readiness begin; `started` is true.
    Started { id: String },
    /// Readiness changed.
    Ready { id: String, ready: bool },
    /// Liveness or startup failed past its threshold: restart the container.
    Failed { id: String, message: String },
}

/// Where probes go.
#[derive(Clone)]
pub(crate) struct Target {
    pub id: String,
    pub runtime: Arc<Runtime>,
    pub pod_ip: Option<IpAddr>,
}

/// Runs the container's probes until the task is aborted.
pub(crate) async fn run(c: Container, target: Target, tx: mpsc::UnboundedSender<ProbeEvent>) {
    let target = Arc::new(target);
    let id = target.id.clone();
    if let Some(p) = &c.startup_probe {
        match until(p, &c, &target, true).await {
            Ok(()) => {}
            Err(message) => {
                let _ = tx.send(ProbeEvent::Failed {
                    id,
                    message: format!("Startup probe failed: {message}"),
                });
                return;
            }
        }
    }
    let _ = tx.send(ProbeEvent::Started { id: id.clone() });
    let readiness = async {
        match &c.readiness_probe {
            Some(p) => readiness(p, &c, &target, &tx).await,
            None => {
                let _ = tx.send(ProbeEvent::Ready {
                    id: id.clone(),
                    ready: true,
                });
                std::future::pending::<()>().await;
            }
        }
    };
    let liveness = async {
        match &c.liveness_probe {
            Some(p) => {
                if let Err(message) = until(p, &c, &target, false).await {
                    let _ = tx.send(ProbeEvent::Failed {
                        id: id.clone(),
                        message: format!("Liveness probe failed: {message}"),
                    });
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = readiness => {}
        () = liveness => {}
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

/// With `succeed`: returns when the probe reaches its success threshold,
/// or fails at its failure threshold (startup). Without: runs until the
/// failure threshold is reached (liveness).
async fn until(p: &Probe, c: &Container, t: &Target, succeed: bool) -> Result<(), String> {
    tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
    let mut failures = 0;
    loop {
        match check(p, c, t).await {
            Ok(()) => {
                failures = 0;
                if succeed {
                    return Ok(());
                }
            }
            Err(message) => {
                failures += 1;
                if failures >= failure_threshold {
                    return Err(message);
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn readiness(p: &Probe, c: &Container, t: &Target, tx: &mpsc::UnboundedSender<ProbeEvent>) {
    tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    let success_threshold = p.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
    let (mut ok, mut bad) = (0, 0);
    let mut ready: Option<bool> = None;
    loop {
        let result = check(p, c, t).await;
        if result.is_ok() {
            ok += 1;
            bad = 0;
        } else {
            bad += 1;
            ok = 0;
        }
        let now = if ok >= success_threshold {
            Some(true)
        } else if bad >= failure_threshold || (ready.is_none() && bad > 0) {
            Some(false)
        } else {
            ready
        };
        if now != ready
            && let Some(r) = now
        {
            ready = now;
            let _ = tx.send(ProbeEvent::Ready {
                id: t.id.clone(),
                ready: r,
            });
        }
        tokio::time::sleep(period).await;
    }
}

/// One probe attempt.
async fn check(p: &Probe, c: &Container, t: &Target) -> Result<(), String> {
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
    let port_of = |port: &IntOrString| -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => {
                u16::try_from(*n).map_err(|_| format!("port {n} is out of range"))
            }
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}")),
        }
    };
    if let Some(exec) = &p.exec {
        let request = ExecRequest {
            args: exec.command.clone().unwrap_or_default(),
            env: Vec::new(),
            timeout: Some(timeout),
        };
        return match t.runtime.exec(&t.id, &request).await {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => Err(format!(
                "command {:?} exited with {}: {}",
                request.args,
                out.exit_code,
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(http) = &p.http_get {
        let port = port_of(&http.port)?;
        let host = match http.host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()) {
            Some(ip) => ip,
            None => t.pod_ip.ok_or("the pod has no IP to probe")?,
        };
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n",
            std::net::SocketAddr::new(host, port)
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let attempt = async {
            let mut s = TcpStream::connect((host, port))
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            // The status line is all a probe needs.
            while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
                let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let line = String::from_utf8_lossy(&buf);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("no HTTP status line in {:?}", line.lines().next()))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Get \"http://{host}:{port}{path}\": context deadline exceeded"
                ))
            });
    }
    if let Some(tcp) = &p.tcp_socket {
        let port = port_of(&tcp.port)?;
        let host = match tcp.host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()) {
            Some(ip) => ip,
            None => t.pod_ip.ok_or("the pod has no IP to probe")?,
        };
        return match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(grpc) = &p.grpc {
        // The gRPC health protocol needs HTTP/2; a connect check stands in
        // until the agent carries a gRPC client.
        let port =
            u16::try_from(grpc.port).map_err(|_| format!("port {} is out of range", grpc.port))?;
        let host = t.pod_ip.ok_or("the pod has no IP to probe")?;
        return match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("gRPC probe: dial {host}:{port}: {e}")),
            Err(_) => Err(format!("gRPC probe: dial {host}:{port}: timeout")),
        };
    }
    Err("the probe has no handler (exec, httpGet, tcpSocket or grpc)".to_owned())
}
