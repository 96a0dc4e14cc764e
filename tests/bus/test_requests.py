"""The open requests' bound: past it the agent holding the most gives up its oldest."""

from __future__ import annotations

from gateway.bus.requests import OpenRequests


def test_a_flooding_agent_closes_its_own_oldest_never_anothers() -> None:
    opened = OpenRequests(3)
    opened.add("victim", "v1", "asker", 1)
    for n in range(5):
        opened.add("flooder", f"f{n}", "sibling", 1)
    assert len(opened) == 3
    assert opened.pop("victim", "v1") == ("asker", 1)
    assert opened.pop("flooder", "f2") is None  # its oldest went first
    assert opened.pop("flooder", "f4") == ("sibling", 1)
    assert opened.pop("victim", "v1") is None  # answered: closed
    opened.forget("flooder")
    assert len(opened) == 0


def test_the_same_request_twice_is_held_once() -> None:
    opened = OpenRequests(2)
    opened.add("a", "r1", "x", 1)
    opened.add("a", "r1", "x", 2)
    assert len(opened) == 1 and opened.pop("a", "r1") == ("x", 2)
