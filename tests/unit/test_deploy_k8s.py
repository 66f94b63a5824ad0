"""deploy/k8s holds what `kubectl apply -k deploy/k8s` deploys (and deploy/k8s/flower, the
optional Flower). No cluster and no
container engine here, so the manifests are checked as data: against the Kubernetes API
schemas of one pinned version (kubernetes-validate, strict), and against the product
itself for what a schema cannot see: the API probed on the port it really listens on,
workers on real stages, a grace period that outlasts the longest stage, settings the code
really reads, credentials only through the Secret, every container non-root on a
read-only root filesystem."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flower.options import options as flower_options

from api.openapi import openapi_document
from cli.main import main as orchestrator_cli
from cli.main import stage_queue_names
from cli.serve import METRICS_DIR_VARIABLE
from orchestrator.settings import Settings
from orchestrator.stages import STAGE_STATES
from orchestrator.states import State

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: Each a kustomization: the stack, and the optional Flower beside it.
KUSTOMIZATIONS = [K8S, K8S / "flower"]
#: The Kubernetes version the manifests are written for (and validated against).
KUBERNETES_VERSION = "1.34.0"
#: Not applied by the kustomization: the operator creates the Secret (it says how).
SECRET_EXAMPLE = K8S / "secret.example.yaml"
#: The image's user (the Dockerfile's numeric USER).
UID = GID = 10001
#: Settings that carry credentials (Settings' fields kept out of repr): only by secretKeyRef.
SECRET_VARIABLES = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                    "ORCHESTRATOR_API_TOKENS", "DOWNSTREAM_TOKEN", "NOTIFY_URL",
                    "NOTIFY_SECRET", "FLOWER_BASIC_AUTH"}
#: Variables the processes read that are not settings of orchestrator/settings.py.
NOT_SETTINGS = {
    METRICS_DIR_VARIABLE,  # the API's prometheus multiprocess directory (cli/serve.py)
    "ORCHESTRATOR_ENV_FILE",  # which .env to read, none when empty (cli/startup.py)
    "HOME",  # where gunicorn puts its control socket
}
#: What a worker may still do after its last stage ends, on a warm shutdown: its recovery
#: and two relay threads are each joined for up to 10 s (tasks/recovery.py, relay.py).
WORKER_STOP_S = 30


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(directory: Path = K8S) -> dict[str, Any]:
    return documents(directory / "kustomization.yaml")[0]


def manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")


def applied() -> list[dict[str, Any]]:
    """Every object the kustomizations apply."""
    return [d for directory in KUSTOMIZATIONS for name in kustomization(directory)["resources"]
            for d in documents(directory / name)]


def objects(kind: str) -> list[dict[str, Any]]:
    return [d for d in applied() if d["kind"] == kind]


def the(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in objects(kind) if d["metadata"]["name"] == name]
    return found


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for d in applied():
        if d["kind"] in ("Deployment", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for where, template in pod_specs():
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{where}/{container['name']}", spec, container


def role(container: dict[str, Any]) -> str:
    """The orchestrator subcommand a container runs, or ``flower``."""
    if container["command"] == ["celery"]:
        assert container["args"][:3] == ["-A", "tasks", "flower"], container["name"]
        return "flower"
    assert container["command"] == ["orchestrator"], container["name"]
    return str(container["args"][0])


def with_role(name: str) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]["spec"], c) for d in objects("Deployment")
            for c in d["spec"]["template"]["spec"]["containers"] if role(c) == name]


def secret_example() -> dict[str, Any]:
    [secret] = documents(SECRET_EXAMPLE)
    return secret


def environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: its ConfigMaps, then its own
    entries (which win); a secretKeyRef reads secret.example.yaml's placeholder, an
    optional key it lacks stays unset."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(the("ConfigMap", source["configMapRef"]["name"])["data"])
    placeholders = secret_example()["stringData"]
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            if key in placeholders:
                env[entry["name"]] = placeholders[key]
    return env


def settings_of(container: dict[str, Any]) -> Settings:
    return Settings.from_env(environment(container))


class _Recorder(Mapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.asked.add(name)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_settings_read() -> set[str]:
    recorder = _Recorder()
    Settings.from_env(recorder)
    return recorder.asked


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    return int(number)


def effective(spec: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else spec.get("securityContext", {}).get(key)


def worker_stages(container: dict[str, Any]) -> list[State]:
    args = container["args"]
    assert "--stages" in args, f"{container['name']}: give each worker pool its --stages"
    value = args[args.index("--stages") + 1]
    # The product's own parser: an unknown stage is a ConfigError naming it.
    stage_queue_names(Settings.from_env({}), value)
    return [State(name.strip().upper()) for name in value.split(",")]


def stage_bound(settings: Settings, stages: list[State]) -> float:
    """How long a stage of ``stages`` can hold a worker: its timeout (the watchdog cuts
    the call there) plus HARD_TIMEOUT_GRACE (then it overruns and recovery owns its job)."""
    return max(settings.stage(s).timeout for s in stages) + settings.hard_timeout_grace


# --- Schema and kustomization -----------------------------------------------------------

@pytest.mark.parametrize("path", [p for d in KUSTOMIZATIONS for p in manifest_files(d)],
                         ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_valid_for_the_kubernetes_api(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_kustomization_lists_every_manifest_and_nothing_else(directory: Path) -> None:
    k = kustomization(directory)
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    listed = k["resources"]
    assert len(listed) == len(set(listed)), "a file listed twice"
    missing = [name for name in listed if not (directory / name).is_file()]
    assert missing == [], f"listed but absent: {missing}"
    unlisted = {p.name for p in manifest_files(directory)} - set(listed) - {SECRET_EXAMPLE.name}
    assert unlisted == set(), f"in {directory} but not in its kustomization.yaml: {unlisted}"
    assert SECRET_EXAMPLE.name not in listed, "credentials must not be applied from git"
    assert k["namespace"] == the("Namespace", k["namespace"])["metadata"]["name"]


def test_every_container_runs_the_image_the_kustomization_overrides() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {f"{i['name']}:{i['newTag']}" for d in KUSTOMIZATIONS
              for i in kustomization(d)["images"]}
    assert images == {f"job-orchestrator:{version}"}
    for where, _, container in containers():
        assert container["image"] in images, where
        assert role(container) in {*orchestrator_cli.commands, "flower"}, where


# --- Labels, selectors, rollout order ----------------------------------------------------

def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_every_object_is_part_of_the_pipeline_and_of_one_rollout_step() -> None:
    steps = {"migrate", "workers", "api"}
    for d in applied():
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "cost-pipeline", d["metadata"]["name"]
        assert labels["job-orchestrator/rollout"] in steps, d["metadata"]["name"]
    for where, template in pod_specs():
        # The NetworkPolicy admits the pipeline by this label: its own pods carry it.
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "cost-pipeline", where
    # Migrations first, then the workers, then the API.
    step = {d["metadata"]["name"]: d["metadata"]["labels"]["job-orchestrator/rollout"]
            for d in applied()}
    for d in objects("Job"):
        assert step[d["metadata"]["name"]] == "migrate"
    for d, _, _ in with_role("worker"):
        assert step[d["metadata"]["name"]] == "workers"
    for d, _, _ in with_role("api"):
        assert step[d["metadata"]["name"]] == "api"
    for d in objects("ConfigMap") + objects("Namespace"):
        assert step[d["metadata"]["name"]] == "migrate", "the Job needs them"


def test_every_selector_finds_the_pods_it_means() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in objects("Deployment")}
    for d in objects("Deployment"):
        assert labels_match(d["spec"]["selector"], pods[d["metadata"]["name"]])
        others = [n for n, labels in pods.items()
                  if n != d["metadata"]["name"] and labels_match(d["spec"]["selector"], labels)]
        assert others == [], f"{d['metadata']['name']} would adopt the pods of {others}"
    for kind, selector_of in (("Service", lambda s: {"matchLabels": s["spec"]["selector"]}),
                              ("PodDisruptionBudget", lambda s: s["spec"]["selector"]),
                              ("NetworkPolicy", lambda s: s["spec"]["podSelector"])):
        for d in objects(kind):
            selector = selector_of(d)
            if selector == {}:
                continue  # a NetworkPolicy for every pod of the namespace
            assert any(labels_match(selector, labels) for labels in pods.values()), (
                f"{kind}/{d['metadata']['name']} selects no pod")


# --- The API ---------------------------------------------------------------------------

def test_the_api_runs_two_replicas_probed_on_the_port_it_listens_on() -> None:
    [(deployment, _, container)] = with_role("api")
    assert deployment["spec"]["replicas"] == 2
    settings = settings_of(container)
    assert settings.api_host == "0.0.0.0", "on 127.0.0.1 no probe or Service reaches it"
    [listening] = [p["containerPort"] for p in container["ports"]]
    assert listening == settings.api_port
    paths = openapi_document()["paths"]
    probes = {kind: container[f"{kind}Probe"]["httpGet"]
              for kind in ("readiness", "liveness", "startup")}
    assert probes["readiness"]["path"] == "/readyz"
    assert probes["liveness"]["path"] == "/healthz"
    for kind, probe in probes.items():
        assert probe["path"] in paths, kind
        assert port_number(container, probe["port"]) == settings.api_port, kind
    # The API waits up to STARTUP_TIMEOUT for its services before it listens: liveness
    # must not kill it meanwhile.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > settings.startup_timeout
    [service] = [s for s in objects("Service")
                 if labels_match({"matchLabels": s["spec"]["selector"]},
                                 deployment["spec"]["template"]["metadata"]["labels"])]
    assert service["spec"]["type"] == "ClusterIP"
    for port in service["spec"]["ports"]:
        assert port_number(container, port["targetPort"]) == settings.api_port


def test_the_api_has_a_disruption_budget() -> None:
    [(deployment, _, _)] = with_role("api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [b for b in objects("PodDisruptionBudget")
               if labels_match(b["spec"]["selector"], labels)]
    assert budgets and all(b["spec"].get("minAvailable", 0) >= 1 for b in budgets)


def test_the_api_writes_its_metrics_on_a_volume_of_its_own() -> None:
    [(_, spec, container)] = with_role("api")
    directory = environment(container)[METRICS_DIR_VARIABLE]
    assert mounted_writable(spec, container, directory)


def test_flower_is_probed_and_served_on_the_port_it_listens_on() -> None:
    [(deployment, _, container)] = with_role("flower")
    [port] = [a.removeprefix("--port=") for a in container["args"] if a.startswith("--port=")]
    for kind in ("liveness", "readiness"):
        probe = container[f"{kind}Probe"]["httpGet"]
        assert port_number(container, probe["port"]) == int(port), kind
    for service in objects("Service"):
        if labels_match({"matchLabels": service["spec"]["selector"]},
                        deployment["spec"]["template"]["metadata"]["labels"]):
            for p in service["spec"]["ports"]:
                assert port_number(container, p["targetPort"]) == int(port)


# --- Workers -----------------------------------------------------------------------------

def test_worker_pools_consume_real_stages_and_together_all_four() -> None:
    pools = [worker_stages(c) for _, _, c in with_role("worker")]
    assert len(pools) >= 2, "one pool per stage group, so that each scales on its own"
    covered = {s for pool in pools for s in pool}
    assert covered == set(STAGE_STATES)


def test_worker_grace_period_outlasts_the_longest_stage_in_flight() -> None:
    for deployment, spec, container in with_role("worker"):
        stages = worker_stages(container)
        # As deployed (the ConfigMap), and as the code's defaults would have it.
        bound = max(stage_bound(settings_of(container), stages),
                    stage_bound(Settings.from_env({}), stages))
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > bound + WORKER_STOP_S, (
            f"{deployment['metadata']['name']}: terminationGracePeriodSeconds {grace} <= "
            f"{bound:g} s (longest stage of {[s.value for s in stages]} + "
            f"HARD_TIMEOUT_GRACE) + {WORKER_STOP_S} s to stop")


# --- Configuration -----------------------------------------------------------------------

def test_every_variable_is_one_the_product_reads() -> None:
    known = variables_settings_read() | NOT_SETTINGS
    for d in objects("ConfigMap"):
        unknown = set(d["data"]) - known
        assert unknown == set(), f"ConfigMap/{d['metadata']['name']}: {unknown}"
    flower = {f"FLOWER_{name.upper()}" for name in flower_options.as_dict()}
    for where, _, container in containers():
        own = known | (flower if role(container) == "flower" else set())
        unknown = {e["name"] for e in container.get("env", [])} - own
        assert unknown == set(), f"{where}: {unknown}"
        Settings.from_env(environment(container))  # every value valid (ConfigError if not)


def test_credentials_come_only_from_the_secret() -> None:
    secret = secret_example()
    for d in objects("ConfigMap"):
        assert set(d["data"]) & SECRET_VARIABLES == set(), d["metadata"]["name"]
    for where, _, container in containers():
        assert all("secretRef" not in s for s in container.get("envFrom", [])), (
            f"{where}: name each secret variable (secretKeyRef), not the whole Secret")
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if entry["name"] in SECRET_VARIABLES:
                assert ref is not None, f"{where}: {entry['name']} in plain text"
            if ref is not None:
                assert ref["name"] == secret["metadata"]["name"], where
                assert ref["key"] == entry["name"], where
                assert ref.get("optional") or ref["key"] in secret["stringData"], (
                    f"{where}: {ref['key']} is required but secret.example.yaml lacks it")
    # Nothing applied carries a password in a URL.
    text = "\n".join((K8S / name).read_text() for name in kustomization()["resources"])
    assert not re.search(r"://[^/\s:@]*:[^/\s@]+@", text)


def test_each_role_gets_the_credentials_it_needs() -> None:
    for where, _, container in containers():
        settings = settings_of(container)
        if role(container) in ("api", "worker", "flower"):
            settings.require_services()
        if role(container) == "api":
            settings.require_api_tokens()
        if role(container) == "worker":
            assert settings.downstream_token, f"{where}: DOWNSTREAM_TOKEN"
        if role(container) == "migrate":
            assert settings.database_url, where
        if role(container) == "flower":
            [auth] = [e["valueFrom"]["secretKeyRef"] for e in container["env"]
                      if e["name"] == "FLOWER_BASIC_AUTH"]
            assert not auth.get("optional"), f"{where}: no Flower without its password"


# --- Security -----------------------------------------------------------------------------

def mounted_writable(spec: dict[str, Any], container: dict[str, Any], path: str) -> bool:
    """Whether ``path`` lies on one of the container's emptyDir volumes."""
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    return any(m["name"] in empty_dirs and not m.get("readOnly")
               and (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"))
               for m in container.get("volumeMounts", []))


def test_every_container_is_non_root_on_a_read_only_root() -> None:
    for where, spec, container in containers():
        assert effective(spec, container, "runAsNonRoot") is True, where
        assert effective(spec, container, "runAsUser") == UID, where
        assert effective(spec, container, "runAsGroup") == GID, where
        own = container["securityContext"]
        assert own["readOnlyRootFilesystem"] is True, where
        assert own["allowPrivilegeEscalation"] is False, where
        assert own["capabilities"] == {"drop": ["ALL"]}, where
        assert effective(spec, container, "seccompProfile") == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, where
        # What the processes write: tempfiles, gunicorn's heartbeat files and control
        # socket (under $HOME), prometheus_client's directory.
        env = environment(container)
        for path in ("/tmp", env.get("HOME", "/tmp"), env.get(METRICS_DIR_VARIABLE, "/tmp")):
            assert mounted_writable(spec, container, path), f"{where}: {path} not writable"
        assert "limits" in container["resources"] and "requests" in container["resources"]


def test_the_image_runs_as_the_user_the_pods_ask_for() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    user, _, group = users[-1].partition(":")
    if not user.isdigit():
        pytest.skip(f"the Dockerfile's USER {users[-1]} is a name: Kubernetes can only "
                    "check a numeric one against runAsNonRoot")
    assert int(user) == UID
    if group:
        assert int(group) == GID


def test_every_worker_pod_runs_one_worker_process(tmp_path: Path, monkeypatch: Any) -> None:
    # Each worker container's CPU limit, as the pod's cgroup cpu.max holds it, makes
    # WORKER_PROCESSES=auto one process on a node of 8 CPUs (README: "scale with replicas")
    from cli import workers

    usable_cpus = workers.usable_cpus
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _: set(range(8)))
    for deployment, _, container in with_role("worker"):
        limit = str(container["resources"]["limits"]["cpu"])
        cpus = float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
        (tmp_path / "cpu.max").write_text(f"{int(cpus * 100000)} 100000\n")
        usable = usable_cpus(tmp_path, tmp_path / "no-membership")
        monkeypatch.setattr(workers, "usable_cpus", lambda n=usable: n)
        settings = settings_of(container)
        assert workers.process_count(settings.worker_processes,
                                     settings.worker_concurrency) == 1, (
            deployment["metadata"]["name"])
