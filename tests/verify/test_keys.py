"""Discovered keys on a running gateway (gateway/verify/keys.py): a key revoked, rotated or
unreachable after the verdicts were made is noticed, by the background re-resolve and by a
list_changed re-assessment, against a real HTTPS .well-known server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import schemapin
from gateway.verify.verifier import ToolVerifier
from tests.conftest import RecordingSink
from tests.schemapin.conftest import HttpsServer, https_server  # noqa: F401 - fixture
from tests.verify.test_verifier import DEF, _well_known, config, signed, tool


def _verifier(tmp_path: Path, server: HttpsServer, ttl: float = 300) -> ToolVerifier:
    cfg = config(
        tmp_path,
        "strict",
        # cached for long by default: a re-resolve must fetch afresh all the same
        mcp=f'discovery_ca = "{server.ca_path}"\ndiscovery_ttl_s = {ttl}',
        server=f'domain = "{server.domain}"',
    )
    return ToolVerifier(cfg, RecordingSink())


def test_a_revoked_rotated_or_unreachable_key_is_noticed_by_the_re_resolve(
    tmp_path: Path,
    https_server: HttpsServer,  # noqa: F811
) -> None:
    key = schemapin.generate_private_key()
    fp = schemapin.fingerprint(key.public_key())
    _well_known(https_server, key)
    v = _verifier(tmp_path, https_server)
    assert asyncio.run(v.keys.changed()) == []  # nothing assessed yet: nothing to compare
    assert asyncio.run(v.assess([tool(signed(DEF, key))]))["up__echo"].verification == "verified"
    assert asyncio.run(v.keys.changed()) == []
    _well_known(https_server, key, revoked=[fp])
    assert asyncio.run(v.keys.changed()) == ["up"]
    _well_known(https_server, key)
    assert asyncio.run(v.keys.changed()) == []  # withdrawn before the next assessment
    _well_known(https_server, schemapin.generate_private_key())
    assert asyncio.run(v.keys.changed()) == ["up"]
    https_server.routes.pop("/.well-known/schemapin.json")
    assert asyncio.run(v.keys.changed()) == ["up"]
    info = asyncio.run(v.assess([tool(signed(DEF, key))]))["up__echo"]  # as at start: refused
    assert (info.verification, info.blocked) == ("failed", True)
    assert asyncio.run(v.keys.changed()) == []  # assessed with the failure: no change to report
    v.close()


def test_a_list_changed_re_assesses_the_kept_tools_when_the_key_was_revoked(
    tmp_path: Path,
    https_server: HttpsServer,  # noqa: F811
) -> None:
    """A list_changed keeps unchanged tools' verdicts; made with a key since revoked, they are
    stale: the upstream's every tool is assessed again."""
    key = schemapin.generate_private_key()
    _well_known(https_server, key)
    v = _verifier(tmp_path, https_server, ttl=0)
    listing = [tool(signed(DEF, key))]
    first = asyncio.run(v.assess(listing))
    assert first["up__echo"].verification == "verified"
    _well_known(https_server, key, revoked=[schemapin.fingerprint(key.public_key())])
    out: dict[str, Any] = asyncio.run(v.assess(listing, changed="up", previous=first))
    assert (out["up__echo"].verification, out["up__echo"].blocked) == ("revoked", True)
    v.close()
