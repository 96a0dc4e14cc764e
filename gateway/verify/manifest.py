"""Approved manifests: what a security team signed, as reference SchemaPin envelopes.

File format (JSON)::

    {"version": 1, "upstream": "fs", "tools": [{"schema": {...}, "signature": "<b64>",
      "signed_at": "...", "metadata": {"key_fingerprint": "sha256:...", "approved_by": "..."}}]}

Each envelope is exactly what the reference SchemaPin package verifies; ``metadata`` is not
signed and only informs people. The gateway accepts an envelope only if its signature
verifies against an organisation key from config (``mcp.org_keys``) or the upstream's own
discovered key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.custody import write_atomic
from gateway.errors import ConfigError
from schemapin import SchemaPinError, parse_json


def load_manifest(path: Path, *, upstream: str) -> dict[str, dict[str, Any]]:
    """Envelopes by tool name. A missing file is an empty manifest; a broken one an error, and
    so is one whose ``upstream`` names another server (one manifest file configured for two
    upstreams would let either serve the other's approved tools)."""
    if not path.exists():
        return {}
    try:
        doc = parse_json(path.read_bytes())
    except SchemaPinError as e:
        raise ConfigError(f"{path}: approved manifest is not valid JSON: {e}") from None
    if isinstance(doc, dict) and doc.get("upstream", upstream) != upstream:
        raise ConfigError(
            f"{path}: approved manifest is for upstream {doc.get('upstream')!r}, not {upstream!r}"
        )
    tools = doc.get("tools") if isinstance(doc, dict) else doc
    if not isinstance(tools, list):
        raise ConfigError(f"{path}: approved manifest must hold a list of envelopes under 'tools'")
    out: dict[str, dict[str, Any]] = {}
    for i, env in enumerate(tools):
        if not (
            isinstance(env, dict)
            and isinstance(env.get("schema"), dict)
            and isinstance(env.get("signature"), str)
        ):
            raise ConfigError(f"{path}: tools[{i}] is not a {{schema, signature}} envelope")
        name = env["schema"].get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{path}: tools[{i}].schema has no name")
        out[name] = env
    return out


def save_manifest(path: Path, upstream: str, envelopes: dict[str, dict[str, Any]]) -> None:
    """Write atomically (temp file + rename), so a running gateway never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "upstream": upstream, "tools": [envelopes[k] for k in sorted(envelopes)]}
    write_atomic(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())
