"""deploy/: the Kubernetes manifests validate against the Kubernetes 1.37 schemas
(kubernetes-validate, strict: unknown fields are errors), the compose file and the
HAProxy config are well-formed (``haproxy -c``), and the gateway config they ship is a
valid symbi.toml that selects the shared state from the Secret's variables.

The image itself is built and run in test_image.py (slow); here only that the Dockerfile,
the build script, compose and the Deployment agree on it.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config.load import ENV_OVERRIDES, build_config, load_config
from gateway.config.model import Config
from gateway.errors import ConfigError
from gateway.server.workers import front_limits, haproxy_config
from tests.conftest import ROOT
from tests.state.engines import haproxy_limits

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
IMAGE = "symbi-gateway:latest"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            out.append((name, doc))
    return out


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk


@pytest.mark.parametrize(("name", "doc"), _docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_the_deployment_is_hardened_and_complete() -> None:
    kinds = {d["kind"]: d for _, d in _docs()}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= set(kinds)
    dep = kinds["Deployment"]["spec"]
    assert dep["replicas"] == 3
    pod = dep["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["limits"] and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    secret_vars = set(kinds["Secret"]["stringData"])
    assert secret_vars <= set(ENV_OVERRIDES)  # every variable the Secret sets is one the gateway reads


def test_the_shipped_config_is_valid_and_selects_the_shared_state() -> None:
    kinds = {d["kind"]: d for _, d in _docs()}
    text = kinds["ConfigMap"]["data"]["symbi.toml"]
    assert text == (DEPLOY / "team.toml").read_text()  # one config, two places
    env = kinds["Secret"]["stringData"]
    with pytest.raises(ConfigError):  # the shipped placeholder: no replica starts until it is replaced
        build_config(tomllib.loads(text), environ=env)
    secret = base64.b64encode(os.urandom(32)).decode()
    cfg = build_config(tomllib.loads(text), environ={**env, "SYMBI_BUS_SECRET": secret})
    assert cfg.state.redis_url and cfg.state.postgres_url
    assert cfg.http.port == 8080
    # the agent bus is on the state's Redis, under the secret every replica shares
    assert (cfg.bus.enabled, cfg.bus.backend, cfg.bus.url, cfg.bus.secret) == (
        True,
        "redis",
        cfg.state.redis_url,
        secret,
    )


def test_compose_runs_three_replicas_behind_haproxy_on_redis_and_postgres() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = doc["services"]
    assert {"redis", "postgres", "balancer"} <= set(svc)
    gateways = {name: s for name, s in svc.items() if s.get("image") == IMAGE}
    assert len(gateways) == 3 and set(svc["balancer"]["depends_on"]) == set(gateways)
    data_volumes = set()
    for gw in gateways.values():
        assert gw["read_only"] is True and gw["pull_policy"] == "never"  # the image `make image` builds
        assert set(gw["environment"]) <= set(ENV_OVERRIDES)
        assert "gateway" in gw["networks"]["front"]["aliases"]  # the name haproxy.cfg resolves
        (data,) = [v.split(":")[0] for v in gw["volumes"] if v.split(":")[1] == "/var/lib/symbi"]
        data_volumes.add(data)
    assert len(data_volumes) == 3  # one data dir per replica: one writer per audit chain
    # each replica listens on its own front-network address: no wildcard, not on the state network
    subnet = ipaddress.ip_network(doc["networks"]["front"]["ipam"]["config"][0]["subnet"])
    hosts = [gw["environment"]["SYMBI_HTTP_HOST"] for gw in gateways.values()]
    assert hosts == [gw["networks"]["front"]["ipv4_address"] for gw in gateways.values()]
    assert len(set(hosts)) == 3 and all(ipaddress.ip_address(h) in subnet for h in hosts)
    assert not any(ipaddress.ip_address(h).is_unspecified for h in hosts)
    mount = svc["balancer"]["volumes"][0].split(":")[0]
    assert (DEPLOY / mount).exists()
    assert doc["networks"]["state"]["internal"] is True  # Redis/PostgreSQL unreachable from outside
    # ... but reachable by the gateways' own upstream servers: Redis asks for a password, and
    # every gateway gives it (gateway/state/health.py warns of an open one)
    redis = svc["redis"]["command"]
    assert redis[redis.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    for gw in gateways.values():
        assert gw["environment"]["SYMBI_STATE_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD}@redis:")


def test_haproxy_config_is_accepted_by_haproxy(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (make state-engines)")
    r = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_haproxy_limits_are_the_ones_the_team_config_needs() -> None:
    """The shipped balancer cuts nothing the replicas allow: its timeouts and stick expiry are
    what ``symbi serve --workers`` derives from deploy/team.toml (they were 300 s and 30 min
    whatever the config said)."""
    cfg = load_config(DEPLOY / "team.toml", {})
    replicas = [1, 2, 3]  # compose.yaml's three gateway services (the balancer's maxconn is for all)
    made = haproxy_config("127.0.0.1", 8080, replicas, limits=front_limits(cfg), drop_to=None)
    assert haproxy_limits((DEPLOY / "haproxy.cfg").read_text()) == haproxy_limits(made)


def _stick_rules(text: str, backend: str) -> list[str]:
    """An HAProxy config's stick table's stored data and the rules on it (its backend's name as
    ``<backend>``)."""
    out = []
    for words in (line.split() for line in text.splitlines()):
        if words[:1] == ["stick-table"]:
            out.append(" ".join(words[words.index("store") :] if "store" in words else []))
        elif words[:1] == ["stick"] or words[:1] == ["http-request"] and words[1].startswith("track-sc"):
            out.append(" ".join(words).replace(f"in_table({backend})", "in_table(<backend>)"))
    return out


def test_haproxy_keeps_sessions_as_the_workers_front_does() -> None:
    """The shipped balancer keeps a session's entry as ``symbi serve --workers``' front does:
    held while a request of it runs, refreshed when it ends, never made from a request's id
    (tests/server/test_workers_listening.py shows what each rule does)."""
    made = haproxy_config("127.0.0.1", 8080, [1], limits=front_limits(Config()), drop_to=None)
    shipped = _stick_rules((DEPLOY / "haproxy.cfg").read_text(), "gateways")
    assert shipped == _stick_rules(made, "workers")
    assert any("track-sc0" in rule for rule in shipped) and shipped[0] == "store conn_cur"


def test_dockerfile_builds_on_the_local_base_as_non_root_with_a_health_check() -> None:
    lines = [
        ln.split() for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert [ln[1] for ln in lines if ln[0] == "FROM"] == ["symbi-sandbox:latest"]  # no registry pull
    users = [ln[1] for ln in lines if ln[0] == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    assert any(ln[0] == "HEALTHCHECK" for ln in lines)


def test_the_image_name_agrees_across_build_compose_and_kubernetes() -> None:
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert f'TAG="${{1:-{IMAGE}}}"' in script
    (dep,) = [d for _, d in _docs() if d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == IMAGE
    uid = dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"USER {uid}:{uid}" in (DEPLOY / "Dockerfile").read_text()
