"""The qualified principals a ``symbi serve`` gateway makes, and the checks of one an operator
names (``symbi agents suspend --principal``, ``POST /api/principals/...``). Standard library
only: the CLI checks ``--principal`` as it parses, and ``gateway.runtime`` (the agent registry,
screening, redis) was a third of every ``symbi agents ...`` process's start."""

from __future__ import annotations

PRINCIPAL_KINDS = ("key", "jwt", "anonymous")  # the namespaces of a serving gateway's callers


def principal_malformed(principal: str) -> str | None:
    """Why ``principal`` is not the qualified id of any caller a ``symbi serve`` gateway makes
    (``key:ID``, ``jwt:ISSUER#SUB``, ``anonymous:ID``), or None. A typo held no one while the
    operator was told "suspended" (session 41): refused before anything is changed."""
    kind, colon, ident = principal.partition(":")
    shown = repr(principal[:80])
    if not colon or kind not in PRINCIPAL_KINDS or not ident:
        kinds = ", ".join(f"{k}:" for k in PRINCIPAL_KINDS)
        return f"principal {shown}: a qualified id of a kind the gateway makes ({kinds})"
    if kind == "jwt" and "#" not in ident[1:-1]:
        return f"principal {shown}: a JWT subject is named jwt:ISSUER#SUB"
    return None


def principal_unknown(principal: str, *, jwt_issuer: str | None, anonymous: str | None) -> str | None:
    """Why well-formed ``principal`` names no caller of this gateway (its config: a JWT of
    another issuer or with no ``[http.jwt]``, an anonymous principal not its own), or None."""
    kind, _, ident = principal.partition(":")
    shown = repr(principal[:80])
    if ident != ident.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in ident):
        return f"principal {shown}: no caller's id has white space around it or a control character"
    if kind == "jwt" and (jwt_issuer is None or not principal.startswith(f"jwt:{jwt_issuer}#")):
        here = f"jwt:{jwt_issuer}#SUB ([http.jwt] issuer)" if jwt_issuer else "none ([http.jwt] is not set)"
        return f"principal {shown}: this gateway's JWT subjects are {here}"
    if kind == "anonymous" and ident != anonymous:
        here = f"anonymous:{anonymous}" if anonymous else "none"
        return f"principal {shown}: this gateway's anonymous principal is {here}"
    return None
