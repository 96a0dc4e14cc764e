"""How the gateway makes an ``AgentId``: never from anything a client can choose.

An agent is (authenticated principal, the client's declared name, the session). The id is
an HMAC over those three under a key the registry draws at start, so it is

- bound: the same principal, client name and session always map to the same agent while the
  gateway runs, and a different principal can never land on it (the principal is part of it);
- unforgeable as a claim: the id is looked up from the authenticated request, never read
  from a header, ``_meta`` or argument, so naming another agent's id in a request does nothing.

The client's declared name (``clientInfo.name``) is only a label: it is reduced to
``[A-Za-z0-9._-]{1,64}`` and always prefixed with the principal's label (``agent_label``:
``alice/claude-code``), so a client calling itself ``bob/x`` or a hosted agent's name gets
``alice/bob-x``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

ID_PREFIX = "agt-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def clean_label(raw: object, default: str = "unknown") -> str:
    """A client-declared name as a safe label (never empty, at most 64 characters)."""
    text = raw if isinstance(raw, str) else ""
    label = _UNSAFE.sub("-", text).strip("-")[:64]
    return label or default


def agent_label(qualified: str) -> str:
    """The principal part of a session agent's name, one per qualified principal, so no
    principal of one namespace is named (or addressed) as another's (a JWT ``sub=alice`` is not
    the API key ``alice``): an API key principal whose id is a plain label keeps it
    (``alice``); any other gets its source and, when its id is not a plain label or it is a
    JWT's (whose issuer is part of it), a digest of the qualified id (``stdio:local``,
    ``jwt:alice~k3xq7m2p9d``). Made from the qualified id alone, so any process can check a
    name against a key directory entry's principal."""
    source, _, rest = qualified.partition(":")
    ident = rest.rpartition("#")[2] if source == "jwt" else rest
    label = clean_label(ident, "anonymous")
    if source == "key" and label == ident:
        return label
    if source != "jwt" and label == ident:
        return f"{source}:{label}"
    tag = base64.b32encode(hashlib.sha256(qualified.encode("utf-8")).digest()).decode("ascii")[:10]
    return f"{source}:{label}~{tag.lower()}"


def make_agent_id(key: bytes, principal: str, client: str, session: str) -> str:
    """``agt-`` + 20 base32 characters of HMAC-SHA256(key, JSON [principal, client, session])."""
    msg = json.dumps([principal, client, session], ensure_ascii=False).encode("utf-8")  # unambiguous
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return ID_PREFIX + base64.b32encode(digest).decode("ascii")[:20].lower()


def is_agent_id(ref: str) -> bool:
    """Whether ``ref`` has the form of an id ``make_agent_id`` makes (a name or a prefix does not)."""
    rest = ref.removeprefix(ID_PREFIX)
    return rest != ref and len(rest) == 20 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in rest)


def labelled(name: str, qualified: str) -> bool:
    """A session agent's name (``label/client[#n]``) carries its qualified principal's label."""
    label, slash, _ = name.partition("/")
    return not slash or label == agent_label(qualified)
