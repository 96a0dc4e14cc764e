"""What the start says once about settings: values mapped to what runs here, and keys whose
effect another issue is wiring right now.

No key is accepted and ignored silently. A key in ``PENDING`` is validated and typed today;
the part that reads it is being built under the named issue, and until then a config that
sets it hears so once at start (``symbi mcp`` / ``symbi serve`` / ``symbi config check``).
The helper that wires a key deletes its line here (a test checks every seed key is either
wired or listed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.config.model import Config

_logger = logging.getLogger("symbi.config")

# (section, key) -> (issue, what will read it)
PENDING: dict[tuple[str, str], tuple[int, str]] = {}

# value a setting may take that cannot run here -> (what runs instead, why it is the same job)
MAPPED: dict[tuple[str, str, str], tuple[str, str]] = {
    ("security", "crypto_provider", "ring"): (
        "cryptography",
        "ring is a Rust crate; Python's cryptography (OpenSSL) provides the same primitives "
        "(ECDSA P-256, Ed25519, SHA-256, AES-GCM)",
    ),
}


@dataclass(frozen=True)
class Notice:
    key: str  # "section.key"
    kind: str  # "pending" | "mapped"
    text: str
    issue: int | None = None


def notices(config: Config) -> list[Notice]:
    """The notices for the keys this config sets to something other than the default."""
    out: list[Notice] = []
    for section_name in type(config).model_fields:
        section = getattr(config, section_name)
        if not hasattr(section, "model_fields_set"):
            continue
        for key in sorted(section.model_fields_set):
            value = getattr(section, key)
            if value == type(section).model_fields[key].default:
                continue
            name = f"{section_name}.{key}"
            mapped = MAPPED.get((section_name, key, str(value)))
            if mapped is not None:
                out.append(Notice(name, "mapped", f"{name} = {value!r} runs as {mapped[0]!r}: {mapped[1]}"))
            pending = PENDING.get((section_name, key))
            if pending is not None:
                shown = "<set>" if key.endswith("_key") else repr(value)
                out.append(
                    Notice(
                        name,
                        "pending",
                        f"{name} = {shown} is accepted and validated; "
                        f"{pending[1]} reads it once issue {pending[0]} lands (no effect yet)",
                        issue=pending[0],
                    )
                )
    return out


def report(config: Config) -> list[Notice]:
    """At start (the CLI calls this once): check the crypto provider, log each notice once."""
    from gateway.crypto import start_provider

    _logger.info("crypto provider: %s", start_provider(config))
    found = notices(config)
    for n in found:
        _logger.warning("config: %s", n.text)
    return found
