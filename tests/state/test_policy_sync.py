"""``PolicySync`` against a real PostgreSQL, with real embedded engines (no replicas: the
two "replicas" are two engines with their own policy files in one process).

What a replica starting, restarting or receiving relies on: the first one publishes what it
loaded; one restarted with a file the fleet already moved past takes the fleet's newest
version; one started with a file no replica published (a new ConfigMap) publishes it; a
published version whose tests fail, or whose text does not match its digest, is refused
and the policy in force keeps deciding.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.events import Event
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import discover_files, policy_digest
from gateway.state.policies import PgPolicyStore, PolicySync
from gateway.state.postgres import Postgres
from tests.conftest import ROOT, RecordingSink
from tests.state.engines import Postgres as PgEngine

CANARY = {
    "action": "call",
    "kind": "tools/call",
    "target": "mut__echo",
    "principal": {"id": "tester", "kind": "user", "roles": ["tester"], "claims": {}},
    "tool": {"name": "mut__echo", "original_name": "echo", "upstream": "mut", "verification": "pinned"},
    "upstream": {"name": "mut", "transport": "stdio"},
    "arguments": {},
    "context": {"calls_last_minute": 0, "calls_last_hour": 0, "tool_calls_last_minute": 0},
}


def _files(folder: Path, *, deny_echo: bool = False) -> Path:
    folder.mkdir()
    shutil.copy(ROOT / "policies.rego", folder / "policies.rego")
    doc = json.loads((ROOT / "tests/assets/policy/test-data.json").read_text())
    doc["symbi_data"]["roles"]["tester"]["deny_tools"] = ["mut__echo"] if deny_echo else []
    (folder / "data.json").write_text(json.dumps(doc))
    return folder


def _replica(folder: Path, pg: Postgres, name: str) -> tuple[EmbeddedEngine, PolicySync, RecordingSink]:
    sink = RecordingSink()
    engine = EmbeddedEngine(discover_files(folder / "policies.rego", folder / "data.json"), events=sink)
    engine.load()
    return engine, PolicySync(engine, PgPolicyStore(pg), sink, replica=name), sink


@pytest.fixture
def pg(postgres_engine: PgEngine) -> Iterator[Postgres]:
    p = Postgres(postgres_engine.url, timeout_s=2).open()
    with p.cursor() as cur:
        cur.execute("TRUNCATE symbi_policies")
    try:
        yield p
    finally:
        p.close()


def test_start_publishes_adopts_and_a_new_file_wins(tmp_path: Path, pg: Postgres) -> None:
    a, sync_a, sink_a = _replica(_files(tmp_path / "a"), pg, "a")
    sync_a.start()  # first replica: publishes what it loaded
    assert [t for t, _ in sink_a.events] == [Event.POLICY_PUBLISHED]
    assert a.decide(CANARY).allow

    b, sync_b, _ = _replica(_files(tmp_path / "b", deny_echo=True), pg, "b")
    sync_b.start()  # a file nobody published (a new ConfigMap): B publishes it
    assert not b.decide(CANARY).allow
    sync_a.sync_once()  # (what the NOTIFY or the poll runs)
    assert not a.decide(CANARY).allow and a.status()["source"] == "broadcast"

    # A restarts on its old file, which the fleet already moved past: it takes the newest
    a2, sync_a2, sink_a2 = _replica(tmp_path / "a", pg, "a")
    assert a2.decide(CANARY).allow  # (its file, until it syncs)
    sync_a2.start()
    assert not a2.decide(CANARY).allow
    assert [(t, d["publisher"]) for t, d in sink_a2.events] == [(Event.POLICY_RELOADED, "b")]
    for e in (a, b, a2):
        e.close()


@pytest.mark.parametrize("attack", ["failing_test", "digest_mismatch", "does_not_parse"])
def test_a_bad_published_version_is_refused_and_the_old_one_decides(
    tmp_path: Path, pg: Postgres, attack: str
) -> None:
    a, sync_a, sink = _replica(_files(tmp_path / "a"), pg, "a")
    sync_a.start()
    good = a.bundle
    assert good is not None and good.data_source is not None
    raw = good.data_source[1]
    policy, tests = good.modules[0][1] + "\n# changed\n", good.tests
    digest = policy_digest(policy, raw)
    if attack == "failing_test":
        tests = (("x_test.rego", "package symbi_test\n\ntest_fails if { false }\n"),)
    elif attack == "does_not_parse":
        policy = "package symbi\n\ndecision := {"
        digest = policy_digest(policy, raw)
    else:  # the text is not the one its digest names
        digest = policy_digest(policy + "# more", raw)
    bad = replace(good, modules=(("p.rego", policy),), digest=digest, tests=tests)
    version = PgPolicyStore(pg).publish(bad, "intruder")
    sync_a.sync_once()
    assert a.bundle is good and a.decide(CANARY).allow
    refused = a.status()["refused"]
    assert (refused["version"], refused["publisher"]) == (version, "intruder")
    assert [d["source"] for t, d in sink.events if t == Event.POLICY_RELOAD_REFUSED] == ["broadcast"]
    a.close()
