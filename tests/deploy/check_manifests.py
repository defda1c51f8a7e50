"""What deploy/ promises, asserted on the rendered manifests and the compose file.

Usage: check_manifests.py COMPOSE_FILE RENDERED.yaml [RENDERED.yaml ...]
Each rendered file is `kubectl kustomize` of one overlay. Prints one line per check and
'N passed, M failed'; exits non-zero on any failure.
"""

import sys

import yaml

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok     " if ok else "FAILED ") + name + ("" if ok else f": {detail}"))


def env_of(docs, container):
    """The container's environment: its ConfigMaps' data, then its own env."""
    env = {}
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps.get(source["configMapRef"]["name"], {}))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "")
    return env


def check_rendered(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {d["kind"] for d in docs}
    for kind in ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "ConfigMap", "Secret", "NetworkPolicy"]:
        check(f"{path}: has a {kind}", kind in kinds, sorted(kinds))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    gw = next(c for c in pod["containers"] if c["name"] == "gateway")
    probe = lambda kind: gw.get(kind, {}).get("httpGet", {}).get("path")
    check(f"{path}: readiness probe is /readyz", probe("readinessProbe") == "/readyz", probe("readinessProbe"))
    check(f"{path}: liveness probe is /healthz", probe("livenessProbe") == "/healthz", probe("livenessProbe"))
    check(f"{path}: startup probe is /healthz", probe("startupProbe") == "/healthz", probe("startupProbe"))
    check(f"{path}: the pod runs as non-root", pod.get("securityContext", {}).get("runAsNonRoot") is True)
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        check(f"{path}: {c['name']} has a read-only root filesystem", sc.get("readOnlyRootFilesystem") is True, sc)
        check(f"{path}: {c['name']} cannot escalate and drops every capability",
              sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"], sc)
        res = c.get("resources", {})
        check(f"{path}: {c['name']} has requests and a memory limit",
              "cpu" in res.get("requests", {}) and "memory" in res.get("limits", {}), res)
    # The pod must outlive the pause, the not-ready delay, the drain and the final flush.
    pre = gw.get("lifecycle", {}).get("preStop", {})
    pause = int(pre.get("exec", {}).get("command", ["sleep", "0"])[-1]) if "exec" in pre else pre.get("sleep", {}).get("seconds", 0)
    env = env_of(docs, gw)
    delay = int(env.get("BLUESMINDS_SERVER__SHUTDOWN_DELAY_MS", "0")) / 1000
    grace = int(env.get("BLUESMINDS_SERVER__SHUTDOWN_GRACE_MS", "10000")) / 1000
    settle = 5  # the gateway's settlement deadline, then the usage flush
    period = pod.get("terminationGracePeriodSeconds", 30)
    check(f"{path}: a preStop pause", pause > 0, pre)
    check(f"{path}: termination grace ({period} s) > preStop + delay + drain + settle ({pause + delay + grace + settle} s)",
          period > pause + delay + grace + settle)
    init = [c for c in pod.get("initContainers", []) if c.get("args") == ["migrate"]]
    check(f"{path}: migrations run in an init container", len(init) == 1)
    check(f"{path}: the gateway does not migrate again", "--no-migrate" in gw.get("args", []) or env.get("BLUESMINDS_DATABASE__MIGRATE_ON_START") == "false")
    secret = next(d for d in docs if d["kind"] == "Secret")
    values = list(secret.get("stringData", {}).values()) + list(secret.get("data", {}).values())
    check(f"{path}: the Secret is a template (every secret a placeholder)",
          all("REPLACE_ME" in v or v.startswith("redis://redis") for v in values), secret.get("stringData"))
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    check(f"{path}: the HPA never goes below the PDB's minimum + 1",
          hpa["spec"]["minReplicas"] > pdb["spec"].get("minAvailable", 0))
    strategy = deploy["spec"].get("strategy", {}).get("rollingUpdate", {})
    check(f"{path}: rollouts never take a serving pod away first", strategy.get("maxUnavailable") == 0, strategy)


def check_compose(path):
    doc = yaml.safe_load(open(path))
    services = doc["services"]
    gateways = [n for n in services if n.startswith("gateway-")]
    check(f"{path}: two gateway replicas", len(gateways) == 2, gateways)
    for name in gateways:
        s = services[name]
        env = s.get("environment", {})
        check(f"{path}: {name} waits for the setup (migrations)",
              s.get("depends_on", {}).get("setup", {}).get("condition") == "service_completed_successfully")
        check(f"{path}: {name} has a health check on the readiness path",
              "/api/health/ready" in " ".join(s.get("healthcheck", {}).get("test", [])))
        check(f"{path}: {name} drains after a not-ready delay",
              int(env.get("BLUESMINDS_SERVER__SHUTDOWN_DELAY_MS", "0")) > 0, env)
        check(f"{path}: {name} runs read-only", s.get("read_only") is True)
    for dep in ["postgres", "redis", "litellm", "mock", "lb"]:
        check(f"{path}: has {dep}", dep in services)
    check(f"{path}: the load balancer waits for healthy gateways",
          all(services["lb"]["depends_on"][g]["condition"] == "service_healthy" for g in gateways))


if __name__ == "__main__":
    check_compose(sys.argv[1])
    for rendered in sys.argv[2:]:
        check_rendered(rendered)
    passed, failed = results.count(True), results.count(False)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
