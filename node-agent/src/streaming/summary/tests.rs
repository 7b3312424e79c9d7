use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{CgroupFs, Collector, Summary};

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("fixture dir");
    }
    std::fs::write(path, text).expect("fixture file");
}

const MEMINFO: &str = "MemTotal:        4000000 kB\nMemFree:         1000000 kB\nMemAvailable:    2500000 kB\nInactive(file):   500000 kB\n";

fn pod<'a>(s: &'a Summary, name: &str) -> &'a super::PodStats {
    s.pods
        .iter()
        .find(|p| p.pod_ref.name == name)
        .unwrap_or_else(|| panic!("pod {name} missing from {s:?}"))
}

#[test]
fn cgroup_v1_pods_and_containers_with_rates_from_two_samples() {
    let d = tempfile::tempdir().expect("scratch dir");
    let (cpu, mem) = (d.path().join("cpuacct"), d.path().join("memory"));
    let pod_dir = "shoal/n1/pod-u1";
    write(&cpu.join("cpuacct.usage"), "50000000000\n");
    write(&cpu.join(pod_dir).join("cpuacct.usage"), "3000000000\n");
    write(&cpu.join(pod_dir).join("app/cpuacct.usage"), "2000000000\n");
    write(
        &mem.join(pod_dir).join("memory.usage_in_bytes"),
        "10485760\n",
    );
    write(
        &mem.join(pod_dir).join("memory.stat"),
        "cache 100\ninactive_file 7\ntotal_inactive_file 2097152\n",
    );
    write(
        &mem.join(pod_dir).join("app/memory.usage_in_bytes"),
        "8388608\n",
    );
    write(
        &mem.join(pod_dir).join("app/memory.stat"),
        "total_inactive_file 1048576\n",
    );
    // A pod cgroup the agent has no log directory for is not reported.
    write(&mem.join("shoal/n1/pod-stray/memory.usage_in_bytes"), "1\n");
    write(&d.path().join("proc/meminfo"), MEMINFO);
    std::fs::create_dir_all(d.path().join("logs/default_web_u1/app")).expect("logs");
    let fs = CgroupFs::at(Some(cpu.clone()), Some(mem), None, d.path().join("proc"));
    let c = Collector::new("n1", d.path().join("logs"), "/shoal/n1", fs);

    let t0 = Instant::now();
    let first = c.summary_at(t0);
    assert_eq!(first.node.node_name, "n1");
    assert_eq!(first.pods.len(), 1, "{first:?}");
    let web = pod(&first, "web");
    assert_eq!(web.pod_ref.namespace, "default");
    assert_eq!(web.pod_ref.uid, "u1");
    let cpu0 = web.cpu.as_ref().expect("pod cpu");
    assert_eq!(cpu0.usage_core_nano_seconds, 3_000_000_000);
    assert_eq!(cpu0.usage_nano_cores, None, "one sample gives no rate");
    let mem0 = web.memory.as_ref().expect("pod memory");
    assert_eq!(
        (mem0.usage_bytes, mem0.working_set_bytes),
        (10_485_760, 8_388_608)
    );
    assert_eq!(web.containers.len(), 1);
    assert_eq!(web.containers[0].name, "app");
    let app_mem = web.containers[0].memory.as_ref().expect("container memory");
    assert_eq!(app_mem.working_set_bytes, 7_340_032);
    let node_mem = first.node.memory.as_ref().expect("node memory");
    assert_eq!(node_mem.usage_bytes, 3_000_000 * 1024);
    assert_eq!(node_mem.working_set_bytes, 2_500_000 * 1024);
    assert_eq!(node_mem.available_bytes, Some(1_500_000 * 1024));

    // Two seconds later the container used one more CPU second: half a core.
    write(&cpu.join("cpuacct.usage"), "54000000000\n");
    write(&cpu.join(pod_dir).join("cpuacct.usage"), "4000000000\n");
    write(&cpu.join(pod_dir).join("app/cpuacct.usage"), "3000000000\n");
    let second = c.summary_at(t0 + Duration::from_secs(2));
    let web = pod(&second, "web");
    assert_eq!(
        web.containers[0]
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores),
        Some(500_000_000)
    );
    assert_eq!(
        web.cpu.as_ref().and_then(|c| c.usage_nano_cores),
        Some(500_000_000)
    );
    assert_eq!(
        second.node.cpu.as_ref().and_then(|c| c.usage_nano_cores),
        Some(2_000_000_000)
    );

    // A request soon after reports the same rate rather than one over a
    // few milliseconds.
    let third = c.summary_at(t0 + Duration::from_millis(2100));
    assert_eq!(
        pod(&third, "web").containers[0]
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores),
        Some(500_000_000)
    );

    let json = serde_json::to_value(&second).expect("json");
    assert_eq!(json["pods"][0]["podRef"]["name"], "web");
    assert_eq!(
        json["pods"][0]["containers"][0]["cpu"]["usageNanoCores"],
        500_000_000
    );
    assert_eq!(json["node"]["memory"]["workingSetBytes"], 2_560_000_000_u64);
}

#[test]
fn cgroup_v2_reads_cpu_stat_and_memory_current() {
    let d = tempfile::tempdir().expect("scratch dir");
    let root = d.path().join("unified");
    let pod_dir = "shoal/n2/pod-u2";
    write(
        &root.join("cpu.stat"),
        "usage_usec 9000000\nuser_usec 1\nsystem_usec 2\n",
    );
    write(&root.join(pod_dir).join("cpu.stat"), "usage_usec 1000000\n");
    write(
        &root.join(pod_dir).join("side/cpu.stat"),
        "usage_usec 500000\n",
    );
    write(&root.join(pod_dir).join("memory.current"), "4194304\n");
    write(
        &root.join(pod_dir).join("memory.stat"),
        "anon 1\nfile 2\ninactive_file 1048576\nactive_file 3\n",
    );
    write(&root.join(pod_dir).join("side/memory.current"), "2097152\n");
    write(&d.path().join("proc/meminfo"), MEMINFO);
    std::fs::create_dir_all(d.path().join("logs/kube-system_dns_u2/side")).expect("logs");
    let fs = CgroupFs::at(None, None, Some(root.clone()), d.path().join("proc"));
    let c = Collector::new("n2", d.path().join("logs"), "/shoal/n2/", fs);

    let t0 = Instant::now();
    let first = c.summary_at(t0);
    let dns = pod(&first, "dns");
    assert_eq!(dns.pod_ref.namespace, "kube-system");
    assert_eq!(
        dns.cpu.as_ref().map(|c| c.usage_core_nano_seconds),
        Some(1_000_000_000)
    );
    assert_eq!(
        dns.memory.as_ref().map(|m| m.working_set_bytes),
        Some(3_145_728)
    );
    assert_eq!(
        dns.containers[0]
            .memory
            .as_ref()
            .map(|m| m.working_set_bytes),
        Some(2_097_152),
        "no memory.stat: the working set is the usage"
    );

    write(
        &root.join(pod_dir).join("side/cpu.stat"),
        "usage_usec 900000\n",
    );
    let later = c.summary_at(t0 + Duration::from_secs(4));
    assert_eq!(
        pod(&later, "dns").containers[0]
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores),
        Some(100_000_000),
        "0.4 s of CPU over 4 s is 100m"
    );

    // The pod goes and a new cgroup of the same name starts from zero: no
    // rate from a counter that went backwards.
    write(&root.join(pod_dir).join("side/cpu.stat"), "usage_usec 10\n");
    let restarted = c.summary_at(t0 + Duration::from_secs(4) + Duration::from_millis(10));
    assert_eq!(
        pod(&restarted, "dns").containers[0]
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores),
        None
    );
}
