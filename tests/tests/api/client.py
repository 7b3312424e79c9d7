"""The official Python Kubernetes client against shoal's API.

Run by python.rs as `python3 client.py KUBECONFIG`. Each step prints `ok: ...`;
the first failure raises, so the exit code is non-zero and the traceback
names the step. The last line is `PASS`.
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "py-client"
LABELS = {"app": "py", "owner": "client-py"}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def configmap(name, data, labels=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        data=data,
    )


def deployment(name):
    containers = [
        client.V1Container(
            name="web",
            image="busybox:1.36",
            command=["httpd", "-f", "-p", "8080"],
            ports=[client.V1ContainerPort(container_port=8080)],
        ),
        client.V1Container(name="sidecar", image="busybox:1.36", command=["sleep", "1d"]),
    ]
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=LABELS),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "py"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "py"}),
                spec=client.V1PodSpec(containers=containers),
            ),
        ),
    )


def expect_status(status, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as e:
        check(e.status == status, f"{call.__name__} answered {e.status}, not {status}: {e.body}")
        return e
    raise AssertionError(f"{call.__name__} succeeded; expected {status}")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    ns = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    check(ns.metadata.name == NS and ns.metadata.uid, f"namespace came back as {ns.metadata}")
    print("ok: created namespace", NS)

    core.create_namespaced_config_map(NS, configmap("settings", {"mode": "fast"}, LABELS))
    core.create_namespaced_config_map(NS, configmap("unlabelled", {"x": "y"}))
    dep = apps.create_namespaced_deployment(NS, deployment("web"))
    check(dep.spec.strategy.type == "RollingUpdate", f"no defaulted strategy: {dep.spec.strategy}")
    print("ok: created 2 configmaps and a deployment; server defaults visible")

    cms = core.list_namespaced_config_map(NS, label_selector="app=py,owner=client-py")
    names = sorted(c.metadata.name for c in cms.items)
    check(names == ["settings"], f"label selector app=py,owner=client-py listed {names}")
    deps = apps.list_namespaced_deployment(NS, label_selector="app in (py)")
    check([d.metadata.name for d in deps.items] == ["web"], f"deployments listed {deps.items}")
    print("ok: label selectors list", names, "and", [d.metadata.name for d in deps.items])

    # A dict body is sent as a strategic merge patch: containers merge by name.
    patched = apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "busybox:1.37"}]}}}},
    )
    images = {c.name: c.image for c in patched.spec.template.spec.containers}
    check(patched.spec.replicas == 3, f"replicas after patch: {patched.spec.replicas}")
    check(images == {"web": "busybox:1.37", "sidecar": "busybox:1.36"}, f"containers after patch: {images}")
    check(patched.metadata.generation == 2, f"generation after a spec patch: {patched.metadata.generation}")
    print("ok: strategic merge patch kept the sidecar and changed web's image")

    # Watch from the list's revision so nothing the writer does is missed,
    # however late the stream opens.
    rv = core.list_namespaced_config_map(NS).metadata.resource_version

    def writer():
        time.sleep(0.3)
        core.create_namespaced_config_map(NS, configmap("watched", {"n": "1"}))
        core.patch_namespaced_config_map("watched", NS, {"data": {"n": "2"}})
        core.delete_namespaced_config_map("watched", NS)

    errors = []

    def run_writer():
        try:
            writer()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=run_writer)
    t.start()
    seen = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=10):
        obj = ev["object"]
        if obj.metadata.name != "watched":
            continue
        seen.append((ev["type"], (obj.data or {}).get("n")))
        if ev["type"] == "DELETED":
            w.stop()
    t.join()
    check(not errors, f"the writer failed: {errors}")
    want = [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2")]
    check(seen == want, f"the watch saw {seen}, not {want}")
    print("ok: watch saw", [t for t, _ in seen])

    core.delete_namespaced_config_map("settings", NS)
    apps.delete_namespaced_deployment("web", NS)
    e = expect_status(404, core.read_namespaced_config_map, "settings", NS)
    check(b"NotFound" in (e.body.encode() if isinstance(e.body, str) else e.body), f"404 body: {e.body}")
    expect_status(404, apps.read_namespaced_deployment, "web", NS)
    expect_status(409, core.create_namespaced_config_map, NS, configmap("unlabelled", {}))
    print("ok: deleted; a read answers ApiException 404 NotFound; a duplicate create 409")

    core.delete_namespace(NS)
    print("PASS")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: client.py KUBECONFIG")
    main(sys.argv[1])
