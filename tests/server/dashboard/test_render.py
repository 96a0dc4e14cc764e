"""The dashboard's tool page (gateway/server/dashboard/render.py): what a reviewer sees before
the Approve button."""

from __future__ import annotations

from typing import Any

from gateway.server.dashboard.render import tool_page, upstreams_page

SESSION = {"csrf": "t0ken", "principal": "admin", "base": "/d/pr3fix"}


def _info(key_change: dict[str, str] | None, rejected: bool = False) -> dict[str, Any]:
    return {
        "tool": "up__echo",
        "status": "drifted",
        "drifted": True,
        "approved_hash": "a" * 64,
        "current_hash": "b" * 64,
        "diff": "-old\n+new\n",
        "key_change": key_change,
        "pin_change_rejected": rejected,
        "screening": [],
    }


def test_a_rotation_the_approval_would_accept_is_shown_beside_the_diff() -> None:
    page = tool_page(SESSION, _info({"pinned": "sha256:<old>", "current": "sha256:new"}), None)
    assert 'id="key-change"' in page and 'id="approve"' in page
    assert "sha256:&lt;old&gt;" in page and "sha256:<old>" not in page  # escaped, as the rest
    assert 'id="key-change"' not in tool_page(SESSION, _info(None), None)


def test_a_rejected_pin_change_is_named_and_offers_no_approve_button() -> None:
    page = tool_page(SESSION, _info(None, rejected=True), None)
    assert 'id="pin-rejected"' in page and 'id="approve"' not in page  # the approval is refused (409)
    assert 'id="diff"' in page  # what was rejected is still shown
    plain = tool_page(SESSION, _info(None), None)
    assert 'id="pin-rejected"' not in plain and 'id="approve"' in plain


def test_a_discovered_server_that_cannot_be_approved_shows_why_and_no_button() -> None:
    """A discovered server with ``${input:...}`` references the gateway does not fill in is
    refused approval (409): the dashboard shows the reason instead of the Approve button."""
    server = {
        "name": "keyed",
        "status": "quarantined",
        "original_name": "keyed",
        "source": "/p/.vscode/mcp.json",
        "launches": "API_KEY=*** keyed-mcp",
        "unresolved": "unresolved references ...: env.API_KEY (${API_KEY})",
        "digest": "ab" * 32,
    }
    page = upstreams_page(SESSION, [], [server], None)
    assert 'id="unresolved-keyed"' in page and 'id="approve-keyed"' not in page
    page = upstreams_page(SESSION, [], [{**server, "unresolved": None}], None)
    assert 'id="unresolved-keyed"' not in page and 'id="approve-keyed"' in page
    # the form sends back the digest of the config shown (a config swapped in since is refused)
    assert f'name="digest" value="{"ab" * 32}"' in page
