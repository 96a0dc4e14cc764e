"""An operator's action carried out while the audit log breaks under it (the log's check
passed, then a resume's Redis round trip, or another caller's batch, broke it): the runtime
moved the agent and its own record raised. ``carry_out`` let that ``AuditError`` out, a bare
500 for an action done, and the operator's record was never made nor held. Now it is done,
said so, and the caller commits (or holds) the operator's record (``server.oprecord``)."""

from __future__ import annotations

from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.runtime.core import AgentRuntime
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.orders import Order, carry_out
from tests.runtime.test_core import BreakingRecorder, agent_of


def test_an_action_whose_state_change_the_log_refuses_is_done_and_its_record_returned() -> None:
    rec = BreakingRecorder()
    rt = AgentRuntime(Config(runtime=RuntimeSection()), rec)
    a = agent_of(rt)
    rt.begin(a, "t")  # Running
    rec.broken = True  # after the operator's check
    order = Order(action="suspend", by="ops", reason="leak", via="", at=0.0)
    done, _, record = carry_out(rt, a, order)
    assert done and a.state is AgentState.SUSPENDED  # moved, then its record raised
    assert record is not None and record["agent"] == a.id


def test_a_pending_suspension_whose_record_the_log_refuses_still_holds_its_principal() -> None:
    """A Ready agent's suspension is pending; its record raised before its principal was held,
    so the principal's other sessions stayed open under a 503 saying the action was done."""
    rec = BreakingRecorder()
    rt = AgentRuntime(Config(runtime=RuntimeSection()), rec)
    a = agent_of(rt)  # Ready
    rec.broken = True
    done, _, _ = carry_out(rt, a, Order(action="suspend", by="ops", reason="leak", via="", at=0.0))
    assert done and a.suspend_pending is not None
    assert rt.holds.holding(a.owner)  # its principal's other sessions are refused
