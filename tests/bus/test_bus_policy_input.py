"""The policy input of a bus decision (gateway/bus/assemble.py policy_authorizer), read by a
real Rego policy in the embedded engine: the caller's runtime record (input.agent: name, state,
priority, hosted), input.target (the kind, as for every action) and input.upstream (the bus
built-in). The shipped policy reads none of these for bus kinds, so a policy that does is the
only way to see them; without a registry the caller is known by its agent id only.

Found by mutation testing (group "bus", scripts/mutate.py): every field of this input could be
dropped with the suite green."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bus.assemble import policy_authorizer
from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing
from gateway.bus.embedded import EmbeddedBackend
from gateway.context import Principal
from gateway.errors import PolicyDenied
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from gateway.runtime.agents import AgentRegistry
from tests.bus.test_core import Recorder
from tests.runtime.test_core import Recorder as RuntimeRecorder

pytestmark = pytest.mark.anyio


def _engine(tmp_path: Path, rule: str) -> EmbeddedEngine:
    src = (
        "package symbi\nimport rego.v1\n\n"
        'default decision := {"allow": false, "reasons": ["input not as expected"], "conditions": {}}\n\n'
        'decision := {"allow": true, "reasons": [], "conditions": {}} if {\n'
        '    startswith(input.kind, "bus/")\n'
        "    input.target == input.kind\n"
        '    input.upstream.name == "bus"\n'
        '    input.upstream.transport == "builtin"\n'
        f"{rule}"
        "}\n"
    )
    (tmp_path / "bus.rego").write_text(src)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "bus.rego"))
    assert eng.load()
    return eng


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_bus_decision_sees_the_callers_runtime_record_target_and_upstream(tmp_path: Path) -> None:
    reg = AgentRegistry(RuntimeRecorder())
    run = reg.add_hosted("mailer", Principal(id="agent:mailer", kind="agent"), priority=7, run=1)
    other = reg.add_hosted("reader", Principal(id="agent:reader", kind="agent"), priority=1, run=1)
    engine = _engine(
        tmp_path,
        '    input.agent.name == "mailer"\n'
        '    input.agent.state == "Initializing"\n'
        "    input.agent.priority == 7\n"
        "    input.agent.hosted == true\n",
    )
    authorize = policy_authorizer(engine, reg)
    mailer = Principal(id="agent:mailer", kind="agent", agent=run.id)
    reader = Principal(id="agent:reader", kind="agent", agent=other.id)
    for kind in ("bus/send", "bus/publish", "bus/subscribe"):
        assert (await authorize(kind, mailer, None, "t")).allow is True
        # the same decision for another agent's record is a denial: the record is read
        assert (await authorize(kind, reader, None, "t")).allow is False

    # through the bus: the policy's answer is what send gets
    backend = EmbeddedBackend(tmp_path / "bus.db")
    await backend.start()
    bus = Bus(backend, KeyRing(b"k" * 32, None), events=Recorder(), buffer_size=10, authorize=authorize)
    try:
        await bus.register(other.id, "agent:reader")
        await bus.send(mailer, other.id, "hello")
        with pytest.raises(PolicyDenied):
            await bus.send(reader, run.id, "hello")
    finally:
        await backend.close()


async def test_without_a_registry_the_caller_is_known_by_its_agent_id_only(tmp_path: Path) -> None:
    engine = _engine(
        tmp_path,
        '    input.agent.id == "agent-a"\n    input.agent.name == null\n    input.agent.hosted == false\n',
    )
    authorize = policy_authorizer(engine)
    assert (await authorize("bus/send", Principal(id="team", agent="agent-a"), None, None)).allow is True
    assert (await authorize("bus/send", Principal(id="team", agent="agent-b"), None, None)).allow is False
