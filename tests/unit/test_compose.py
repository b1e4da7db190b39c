"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file must be the stack ``make run`` starts (Kafka in KRaft mode, PostgreSQL, the Bot API
double as the default Telegram, the consumers, two scheduler replicas) plus Jaeger v2 and Prometheus;
its references must hold (services, mounted files, settings, ports), the project's image must be
built once, and every long-running project service must report its readiness.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from dianabot_core.config import ENV_NESTED_DELIMITER
from dianabot_core.settings import ENV_PREFIX, Settings, TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
CONSUMERS_CMD = ["faststream", "run", "consumers.app:app"]
SCHEDULER_CMD = ["faststream", "run", "schedulers.app:app"]
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """``${NAME:-default}`` as a fresh ``docker compose up`` reads it: nothing set, the default taken."""

    def default(match: re.Match[str]) -> str:
        if match["op"] not in (":-", "-"):
            raise AssertionError(f"{match[0]}: only ${{NAME:-default}} is expected in docker-compose.yml")
        return match["arg"]

    return _VARIABLE.sub(default, value).replace("$$", "$")


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def depends_on(service: str) -> dict[str, str]:
    """Each service ``service`` waits for, with the condition (the list form means service_started)."""
    found = SERVICES[service].get("depends_on") or {}
    if isinstance(found, list):
        return dict.fromkeys(found, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in found.items()}


def command(service: str) -> list[str]:
    found = SERVICES[service].get("command") or []
    return shlex.split(found) if isinstance(found, str) else [str(part) for part in found]


def builders() -> list[str]:
    return [name for name, spec in SERVICES.items() if "build" in spec]


def project_image() -> str:
    [builder] = builders()
    return str(SERVICES[builder]["image"])


def one_shot() -> set[str]:
    """Services others wait for to *finish* (the migrations)."""
    return {
        target
        for name in SERVICES
        for target, condition in depends_on(name).items()
        if condition == "service_completed_successfully"
    }


def app_services() -> list[str]:
    """The long-running services that run the project's code."""
    return [
        name
        for name, spec in SERVICES.items()
        if spec.get("image") == project_image() and name not in one_shot()
    ]


def container_ports(service: str) -> dict[int, int]:
    """Container port -> host port of each ``ports`` entry ("[ip:]host:container")."""
    mapped = {}
    for entry in SERVICES[service].get("ports", []):
        *_, host, container = str(entry).split(":")
        mapped[int(container)] = int(host)
    return mapped


def probe_url(service: str) -> str:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] == "CMD", f"{service}: exec form, no shell needed"
    assert test[1:4] == ["python", "-m", "dianabot_core.probe"], (
        f"{service}: probed by dianabot_core/probe.py"
    )
    return str(test[4])


def use_environment(patch: pytest.MonkeyPatch, service: str) -> None:
    """This process's environment as the service's container has it (as far as settings go)."""
    for variable in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        patch.delenv(variable)
    for variable, value in environment(service).items():
        patch.setenv(variable, value)


def http_port(service: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """The port the service's own settings give its /readyz and /metrics server."""
    with monkeypatch.context() as patch:
        use_environment(patch, service)
        settings = Settings(_env_file=None)
        if command(service) == SCHEDULER_CMD:
            return settings.scheduler.http_port
        return settings.telemetry.http_port


# --- references ----------------------------------------------------------------------------------


def test_every_depends_on_names_a_service_and_a_condition_it_can_meet() -> None:
    for name in SERVICES:
        for target, condition in depends_on(name).items():
            assert target in SERVICES, f"{name} depends on {target}, which is not a service"
            assert condition in CONDITIONS, f"{name} -> {target}: unknown condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy: no check"
            profile_free = not SERVICES[target].get("profiles")
            assert profile_free or SERVICES[name].get("profiles"), f"{name} needs {target} of a profile"


def _mounts() -> Iterator[tuple[str, str, str]]:
    for name, spec in SERVICES.items():
        for volume in spec.get("volumes", []):
            if isinstance(volume, dict):
                yield name, str(volume["source"]), str(volume["target"])
            else:
                source, target, *_ = str(volume).split(":")
                yield name, source, target


def test_every_mounted_file_exists_in_the_repository() -> None:
    mounts = list(_mounts())
    assert mounts
    for name, source, _ in mounts:
        assert source.startswith("./"), f"{name}: {source} is not a file of the repository"
        assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    for name in builders():
        build = SERVICES[name]["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        assert (
            context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        ).is_file()


def test_the_project_image_is_built_once_and_never_pulled() -> None:
    assert len(builders()) == 1, f"one service builds the image, not {builders()}"
    [builder] = builders()
    assert SERVICES[builder]["pull_policy"] == "build"
    users = [name for name, spec in SERVICES.items() if spec.get("image") == project_image()]
    assert len(users) >= 5
    for name in users:
        if name != builder:
            assert SERVICES[name].get("pull_policy") == "never", f"{name} would try to pull {project_image()}"


def test_every_project_service_reads_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sections = _settings_sections()
    seen = set()
    for name in [*app_services(), *one_shot()]:
        env = environment(name)
        if not any(variable.startswith(ENV_PREFIX) for variable in env):
            continue  # the Bot API double reads no settings
        for variable in env:
            if variable.startswith(ENV_PREFIX):
                assert _is_setting(variable, sections), f"{name}: {variable} is not a setting of the service"
                seen.add(variable)
        with monkeypatch.context() as patch:  # the values validate as the processes would read them
            use_environment(patch, name)
            Settings(_env_file=None)  # the whole tree: every section is a field of it
    assert "DIANABOT_TELEGRAM__API_BASE_URL" in seen


def _settings_sections() -> dict[str, type[BaseModel]]:
    """Every section of the settings tree by its environment prefix (the root's is ``DIANABOT_``)."""
    found: dict[str, type[BaseModel]] = {ENV_PREFIX: Settings}
    for name, field in Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found[f"{ENV_PREFIX}{name.upper()}{ENV_NESTED_DELIMITER}"] = field.annotation
    assert {ENV_PREFIX, "DIANABOT_MONITORING__", "DIANABOT_SENDER__"} <= set(found)
    return found


def _resolves(model: type[BaseModel], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    rest, annotation = path[1:], field.annotation
    if not rest:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _resolves(annotation, rest)
    value = getattr(annotation, "__args__", (None, None))[-1]  # dict[str, Model]: a key, then the model
    return (
        isinstance(value, type)
        and issubclass(value, BaseModel)
        and (len(rest) == 1 or _resolves(value, rest[1:]))
    )


def _is_setting(variable: str, sections: dict[str, type[BaseModel]]) -> bool:
    for prefix, section in sections.items():
        if prefix != ENV_PREFIX and variable.startswith(prefix):
            return _resolves(section, variable.removeprefix(prefix).lower().split("__"))
    return _resolves(Settings, variable.removeprefix(ENV_PREFIX).lower().split("__"))


def test_the_setting_names_check_tells_real_from_made_up() -> None:
    sections = _settings_sections()
    for real in (
        "DIANABOT_TELEGRAM__API_BASE_URL",
        "DIANABOT_SCHEDULER__HTTP_PORT",
        "DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__CRON",
        "DIANABOT_MONITORING__LAG_THRESHOLD",
        "DIANABOT_SENDER__GLOBAL_RATE_PER_S",
    ):
        assert _is_setting(real, sections), real
    for made_up in (
        "DIANABOT_TELEGRAM__BASE_URL",
        "DIANABOT_METRICS_PORT",
        "DIANABOT_HTTP_PORT",  # the scheduler's, under DIANABOT_SCHEDULER__
        "DIANABOT_SENDER__RATE",
        "DIANABOT_SCHEDULER__JOBS__SCHEDULED_DAILY_CLEANUP__SCHEDULE",
    ):
        assert not _is_setting(made_up, sections), made_up


# --- the stack -----------------------------------------------------------------------------------


def test_the_stack_is_the_one_make_run_starts() -> None:
    kafka = SERVICES["kafka"]
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    pom = (ROOT / "devstack/kafka/pom.xml").read_text()
    kafka_version = re.search(r"<kafka.version>(.+)</kafka.version>", pom)
    assert kafka_version is not None
    assert kafka["image"] == f"apache/kafka:{kafka_version[1]}"
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    commands = {name: command(name) for name in app_services()}
    assert list(commands.values()).count(CONSUMERS_CMD) == 1
    schedulers = [name for name, cmd in commands.items() if cmd == SCHEDULER_CMD]
    assert len(schedulers) >= 2, "run two or three scheduler replicas (README)"
    host_ports = [port for name in schedulers for port in container_ports(name).values()]
    assert len(set(host_ports)) == len(host_ports) == len(schedulers)


def test_telegram_goes_to_the_bot_api_double_by_default() -> None:
    [double] = [name for name in app_services() if command(name)[:3] == ["python", "-m", "dianabot_double"]]
    args = command(double)
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"  # reachable from the other containers
    for name in app_services():
        if command(name)[0] == "faststream":
            url = urlsplit(environment(name)["DIANABOT_TELEGRAM__API_BASE_URL"])
            assert (url.hostname, url.port) == (double, port), name
    assert depends_on("consumers")[double] == "service_healthy"


def test_every_app_service_has_a_readiness_healthcheck_on_its_exposed_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in app_services():
        healthcheck = SERVICES[name].get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable")
        url = urlsplit(probe_url(name))
        assert url.hostname == "127.0.0.1"
        assert url.port in container_ports(name), f"{name}: the probed port is not exposed"
        if command(name)[0] == "faststream":
            assert url.path == "/readyz"
            assert url.port == http_port(name, monkeypatch), f"{name}: not the port its settings serve"


def test_traces_go_to_jaeger_v2() -> None:
    endpoints = {
        environment(name)["DIANABOT_TELEMETRY__OTLP_ENDPOINT"]
        for name in app_services()
        if command(name)[0] == "faststream"
    }
    [endpoint] = endpoints
    url = urlsplit(endpoint)
    assert url.path == "/v1/traces"
    assert url.hostname in SERVICES
    jaeger = SERVICES[str(url.hostname)]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"]), "Jaeger v2 (v1 is end of life)"
    assert f"--set=receivers.otlp.protocols.http.endpoint=0.0.0.0:{url.port}" in jaeger["command"]
    assert 16686 in container_ports(str(url.hostname))


def test_prometheus_scrapes_every_app_metrics_port_and_loads_the_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [prometheus] = [
        name for name, spec in SERVICES.items() if str(spec.get("image", "")).startswith("prom/prometheus:")
    ]
    mounted = {target: ROOT / source for service, source, target in _mounts() if service == prometheus}
    config_path = mounted["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    targets = {
        t for job in config["scrape_configs"] for static in job["static_configs"] for t in static["targets"]
    }
    expected = {
        f"{name}:{http_port(name, monkeypatch)}"
        for name in app_services()
        if command(name)[0] == "faststream"
    }
    assert targets == expected
    for name in expected:
        service, port = name.split(":")
        assert int(port) in container_ports(service), f"{service}: metrics port not exposed"
    for rule_file in config["rule_files"]:
        in_container = f"/etc/prometheus/{rule_file}"
        assert mounted[in_container] == config_path.parent / rule_file
        assert mounted[in_container].is_file()


# --- the image -----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def test_the_image_runs_as_an_unprivileged_user_with_a_readiness_healthcheck() -> None:
    instructions = _dockerfile()
    users = [arg for op, arg in instructions if op == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    [healthcheck] = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert '"dianabot_core.probe"' in healthcheck
    assert "http://127.0.0.1:9464/readyz" in healthcheck
    assert TelemetrySettings().http_port == 9464
    for op, arg in instructions:
        if op == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_grafana_loads_the_dashboard_from_where_it_is_mounted_and_reads_this_prometheus() -> None:
    [grafana] = [name for name, spec in SERVICES.items() if str(spec.get("image", "")).startswith("grafana/")]
    mounts = {target: ROOT / source for service, source, target in _mounts() if service == grafana}
    [dashboard_target] = [target for target, source in mounts.items() if source.name == "dianabot-jobs.json"]
    providers = mounts["/etc/grafana/provisioning/dashboards"]
    [provider] = yaml.safe_load((providers / "dianabot.yml").read_text())["providers"]
    assert provider["options"]["path"] == str(Path(dashboard_target).parent)
    sources = mounts["/etc/grafana/provisioning/datasources"]
    [source] = yaml.safe_load((sources / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname in SERVICES
    assert str(SERVICES[str(url.hostname)]["image"]).startswith("prom/prometheus:")
    assert url.port in container_ports(str(url.hostname))
