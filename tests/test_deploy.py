"""The deployment files agree with the code and with each other: the Docker lock pins what the
tests ran with, the compose file only refers to files that exist and publishes on loopback,
and the Ray cluster file starts the autoscaler and installs eraserd from the checkout."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
CLUSTER = DEPLOY / "ray" / "cluster.yaml"


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("eraserd_lock", DEPLOY / "docker" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- deploy/docker/requirements.lock -----------------------------------------------------------


def test_the_lock_pins_every_runtime_dependency_to_the_tested_version():
    locked = lock.read_lock()
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in lock.IMAGE_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    stale = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name in lock.FROM_BASE_IMAGE:
            assert name not in locked, f"{name} comes from the base image, not the lock"
            continue
        assert name in locked, f"{name} (pyproject.toml) is missing from requirements.lock"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version}: {req}"
        if version != metadata.version(name):
            stale.append(f"{name}: lock {version}, tested {metadata.version(name)}")
    assert not stale, f"regenerate with .venv/bin/python deploy/docker/lock.py: {stale}"


def test_the_lock_is_exactly_the_tested_closure_with_hashes():
    locked = lock.read_lock()
    assert {n: v for n, (v, _) in locked.items()} == lock.pins(), (
        "requirements.lock differs from this venv; regenerate it: "
        ".venv/bin/python deploy/docker/lock.py"
    )
    for name, (version, hashes) in locked.items():
        assert hashes, f"{name}=={version} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (name, hashes)
    for line in lock.LOCK.read_text().splitlines():
        assert not line or line.startswith(("#", "    --hash=sha256:")) or "==" in line, line


def test_the_dockerfile_installs_from_the_lock_only():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "COPY deploy/docker/requirements.lock" in text
    assert "pip install --require-hashes -r requirements.lock" in text
    assert "pip install --no-deps --no-build-isolation ." in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    installs = re.findall(r"pip install[^\n&]*", code)
    assert len(installs) == 2, installs
    assert all("--require-hashes" in i or "--no-deps" in i for i in installs), installs
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!deploy/docker/requirements.lock" in ignore  # else the build context lacks it


# --- deploy/compose.yaml -----------------------------------------------------------------------


def _default(value: str) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _host_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount, host paths resolved like compose does."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            source, target = vol["source"], vol["target"]
        else:
            source, target = _default(vol).split(":")[:2]
        if source.startswith((".", "/", "~")):
            out.append(((COMPOSE.parent / source).resolve(), target))
    return out


def test_compose_services_have_an_image_and_existing_files():
    doc = _compose()
    assert set(doc["services"]) == {"eraserd", "prometheus", "grafana"}
    named = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (COMPOSE.parent / svc["build"]["context"]).resolve()
            assert context == ROOT, context
            assert (context / svc["build"]["dockerfile"]).is_file()
        for source, target in _host_mounts(svc):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if not source.startswith((".", "/", "~", "$")):
                assert source in named, f"{name}: volume {source} is not declared"
        for config in svc.get("configs", []):
            src = config["source"] if isinstance(config, dict) else config
            assert (COMPOSE.parent / doc["configs"][src]["file"]).exists(), src


def test_compose_publishes_on_loopback_only():
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_compose_wiring_matches_the_configs():
    doc = _compose()
    eraserd = doc["services"]["eraserd"]
    mounts = {target: source for source, target in _host_mounts(eraserd)}
    config = yaml.safe_load(mounts["/etc/eraserd/config.yaml"].read_text())
    assert config["daemon"]["host"] == "0.0.0.0" and config["daemon"]["allow_remote"]
    port = config["daemon"].get("port", 8477)
    assert f"127.0.0.1:{port}:{port}" in eraserd["ports"]

    prom = {t: s for s, t in _host_mounts(doc["services"]["prometheus"])}
    prom_cfg = yaml.safe_load(prom["/etc/prometheus/prometheus.yml"].read_text())
    targets = [
        t for sc in prom_cfg["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]
    ]
    assert targets == [f"eraserd:{port}"]
    for rule in prom_cfg["rule_files"]:  # relative to the config file inside the container
        assert rule.startswith("rules/") and (prom["/etc/prometheus/rules"] / rule[6:]).is_file()

    graf = {t: s for s, t in _host_mounts(doc["services"]["grafana"])}
    (ds,) = yaml.safe_load(
        (graf["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text()
    )["datasources"]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "eraserd-prometheus"
    provider = yaml.safe_load(
        (graf["/etc/grafana/provisioning/dashboards"] / "eraserd.yml").read_text()
    )["providers"][0]
    assert graf[provider["options"]["path"]] == (DEPLOY / "grafana" / "dashboards").resolve()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_the_compose_prometheus_config_is_valid():
    proc = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- deploy/ray/cluster.yaml -------------------------------------------------------------------


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_cluster_head_starts_the_autoscaler_that_launches_workers():
    doc = _cluster()
    assert doc["provider"]["type"] == "local" and doc["provider"]["worker_ips"]
    (start,) = [c for c in doc["head_start_ray_commands"] if " start " in c]
    # Without it the head runs no autoscaler, and with provider type local nothing ever starts
    # Ray on the worker IPs.
    assert "--head" in start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in start, start
    (wstart,) = [c for c in doc["worker_start_ray_commands"] if " start " in c]
    assert "--address=$RAY_HEAD_IP:" in wstart
    assert doc.get("min_workers", len(doc["provider"]["worker_ips"])) == len(
        doc["provider"]["worker_ips"]
    )


def test_ray_cluster_installs_eraserd_from_the_mounted_wheel():
    doc = _cluster()
    mounts = doc["file_mounts"]
    setup = doc["setup_commands"]
    installs = [c for c in setup if "pip install" in c]
    eraserd = [c for c in installs if "eraserd-" in c]
    assert eraserd, setup
    for cmd in eraserd:
        (path,) = re.findall(r"(~/[\w.-]+)/eraserd-\*\.whl", cmd)
        assert path in mounts, f"{path} is not in file_mounts"
        assert "--index-url" not in cmd and "--extra-index-url" not in cmd
    for cmd in installs:  # never a bare `eraserd` requirement, which pip looks up in an index
        for token in cmd.split("pip install", 1)[1].split():
            assert not re.fullmatch(r"eraserd(\[[\w,]+\])?(==.*)?", token.strip("'\"")), cmd
    # The wheel comes from this checkout: the header says how to build it into the mount.
    assert f"pip wheel --no-deps -w {mounts[path]} ." in CLUSTER.read_text()
    # Same Ray and torch as the tested venv on every node.
    pins = dict(re.findall(r"([a-z]+)(?:\[[a-z]+\])?==([\w.+]+)", " ".join(installs)))
    for name in ("ray", "torch", "torchvision"):
        assert pins.get(name) == metadata.version(name).split("+")[0], (name, pins)


def test_ray_accepts_the_cluster_file():
    pytest.importorskip("ray")
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_cluster()))  # what `ray up` does before launching
    validate_config(config)
    (node_type,) = config["available_node_types"].values()
    assert node_type["min_workers"] == len(config["provider"]["worker_ips"])


# --- Makefile ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("index", [None, "https://download.pytorch.org/whl/cpu"])
def test_make_takes_torch_from_torch_index_only_when_set(index):
    args = ["make", "-n", "-B", "install"] + ([f"TORCH_INDEX={index}"] if index else [])
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX", "MAKEFLAGS")}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (torch_line,) = [line for line in proc.stdout.splitlines() if "torch==" in line]
    if index is None:
        assert "--index-url" not in proc.stdout
    else:
        assert f"--index-url {index} torch==" in torch_line
    (project_line,) = [line for line in proc.stdout.splitlines() if "-e '.[dev,ray]'" in line]
    assert "--index-url" not in project_line  # only torch/torchvision come from that index
