"""The risk assessment's real inputs, read from the call (not constants).

- what the code asks for: imports and commands that reach the network, touch files
  outside the working directory or call external services (the sandbox grants none of
  it: asking raises the risk, so such code lands in a stronger tier);
- the input files the call brings (a filesystem need);
- the tool's annotations (``openWorldHint``: talks to the world; ``destructiveHint``);
- who is calling: agents (and anything that is not a known person or service) send
  untrusted code; a person's code is of unknown review state, so the configured
  ``security.default_sandbox_tier`` is its floor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .risk import CodeTrust
from .types import SandboxRequest, ToolNeeds

# Python modules / shell commands that reach the network, and well-known external APIs.
_NET_PY = re.compile(
    r"\b(?:import|from)\s+(socket|ssl|http|urllib|urllib3|requests|httpx|aiohttp|ftplib|smtplib|telnetlib|"
    r"paramiko|websocket|websockets|asyncio)\b"
)
_NET_SH = re.compile(
    r"(?:^|[\s;|&(`$])(curl|wget|nc|ncat|netcat|ssh|scp|rsync|ftp|telnet|ping|dig|nslookup)\b"
)
_EXTERNAL = re.compile(
    r"\b(boto3|botocore|openai|anthropic|google\.cloud|azure|stripe|github|slack_sdk|twilio)\b"
)
# File access beyond the temporary working directory.
_FS_PY = re.compile(
    r"\b(open|os\.(?:remove|unlink|rename|walk|listdir|scandir|chmod|chown)|shutil\.|pathlib)\b"
)
_FS_SH = re.compile(
    r"(?:^|[\s;|&(])(?:rm|mv|cp|chmod|chown|find|dd|tar|ln)\s|(?:^|\s)/(?:etc|home|root|var|proc|sys)\b"
)

_KNOWN_KINDS = frozenset({"user", "admin", "service"})


def needs_of(request: SandboxRequest, annotations: Mapping[str, Any] | None = None) -> ToolNeeds:
    """What this run asks for: from its code / command, its files and the tool's annotations."""
    text = request.code if request.code is not None else " ".join(request.command or ())
    is_python = request.code is not None
    network = bool((_NET_PY if is_python else _NET_SH).search(text))
    filesystem = bool(request.files) or bool((_FS_PY if is_python else _FS_SH).search(text))
    external = tuple(sorted(set(_EXTERNAL.findall(text))))
    ann = annotations or {}
    if ann.get("openWorldHint") is True:
        network = True
    if ann.get("destructiveHint") is True:
        filesystem = True
    return ToolNeeds(network=network, filesystem=filesystem, external_apis=external)


def trust_of(principal_kind: str | None) -> CodeTrust | None:
    """An agent's code is untrusted; a person's or service's is of unknown review (``None``:
    the default tier is its floor); an unknown kind of caller counts as an agent."""
    return None if principal_kind in _KNOWN_KINDS else "untrusted"
