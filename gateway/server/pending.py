"""A terminate of a hosted agent that has no run to stop: the start asked for it and not run
yet is withdrawn, wherever the terminate is answered (``gateway.server.operations``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gateway.errors import StateUnavailable
from gateway.runtime.orders import OPERATOR_EVENTS
from gateway.server.oprecord import record_action, with_record
from gateway.server.unavailable import unavailable

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.runtime.hosted import HostedAgents
    from gateway.server.http import HttpState

NOT_RUN_HERE = "the agent has not run here yet"


def hosted_pending(state: HttpState, ref: str, action: str) -> str | None:
    """``ref`` when ``action`` is a terminate (the only action with something to act on in an
    agent never run: its start) and ``ref`` names an enabled hosted agent run here (no lease,
    or this process holds it) that has no record here (never run: at most a start pending),
    else None."""
    gw = state.gateway
    hosted = gw.hosted if gw is not None else None
    ac = state.config.agents.get(ref)
    if action != "terminate" or gw is None or hosted is None or ac is None or not ac.enabled:
        return None
    if ref not in hosted.config.agents:
        return None
    if hosted.leased is not None and not hosted.leased.holds(ref):
        return None  # another process runs it (``pass_hosted_action``)
    return ref if gw.runtime.agents.by_name(ref) is None else None


async def withdraw_pending(
    gw: Gateway, hosted: HostedAgents, name: str, who: str, reason: str
) -> tuple[int, dict[str, Any]] | None:
    """An operator's terminate of ``name`` (``hosted_pending``): its start asked here or on
    Redis and not run yet withdrawn, as a terminate of its run does (``HostedAgents._terminated``),
    answered 200 ``withdrawn`` and recorded; None when there was none (404, as before). Redis
    unreachable: 503 (said withdrawn when one was here); the withdrawal is kept all the same
    (the lease's loop deletes a start asked by now once Redis is back)."""
    withdrawn = hosted.withdraw_start(name, mark=False)  # (marked by the one DEL's call)
    if hosted.leased is not None:
        try:
            withdrawn = await hosted.leased.withdraw_start(name) or withdrawn
        except (RedisError, OSError) as e:
            return await unreachable(gw, name, who, reason, "withdraw its start there", e, withdrawn, None)
    if not withdrawn:
        return None
    return await withdrawn_answer(gw, name, who, reason, 200, {"result": NOT_RUN_HERE}, None)


async def unreachable(
    gw: Gateway,
    name: str,
    who: str,
    reason: str,
    what: str,
    e: BaseException,
    withdrawn: bool,
    seen: dict[str, Any] | None,
) -> tuple[int, dict[str, Any]]:
    """The 503 of a terminate (or a passed action) Redis refused on hosted agent ``name``:
    ``state_unavailable``, and when a start was withdrawn all the same, said and recorded."""
    why = f"the shared state (Redis) could not be reached to {what}: {e}"
    body = unavailable("state", StateUnavailable(why))
    if not withdrawn:
        return 503, body
    return await withdrawn_answer(gw, name, who, reason, 503, {**body, "result": why}, seen)


async def withdrawn_answer(
    gw: Gateway,
    name: str,
    who: str,
    reason: str,
    status: int,
    body: dict[str, Any],
    seen: dict[str, Any] | None,
) -> tuple[int, dict[str, Any]]:
    """A terminate that withdrew a pending start and stopped no run: answered and recorded as
    done (the start is gone), with why it went no further. ``seen``: the holder's status last
    read (its run's id names the agent on the record), None when none holds it or it is here."""
    result = f"a pending start withdrawn; {body['result']}"
    agent_id = (seen or {}).get("agent")
    doc = {"agent": agent_id, "name": name, "by": who, "reason": reason, "result": result}
    unrec = await record_action(gw, OPERATOR_EVENTS["terminate"], doc, principal=who, agent=agent_id)
    # "state": the dashboard and the AgentAction schema read it; no run here to have one
    answer = {**body, "agent": name, "result": result, "state": None, "withdrawn": True}
    return with_record(unrec, status, answer)
