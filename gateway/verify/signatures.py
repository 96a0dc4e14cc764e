"""Checking a tool definition's signature: in-band (``_meta``, against the upstream's own pinned
key) or an entry of the upstream's approved manifest (organisation-signed).

An organisation key counts only through the manifest configured for the upstream: the signed
object never names an upstream, so an in-band signature by an organisation key would make any
upstream that copies it (manifests are plain files) serve that tool as verified."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.config.model import Config
from gateway.context import ToolInfo
from schemapin import (
    DefinitionChanged,
    KeyPinMismatch,
    KeyRevoked,
    KeySnapshot,
    PinStore,
    SchemaPinError,
    verify_tool,
)

if TYPE_CHECKING:
    from gateway.state.pins import PgPinStore


def check_signature(
    info: ToolInfo,
    definition: dict[str, Any],
    signature: str,
    mode: str,
    domain: str | None,
    snapshot: KeySnapshot | None,
    snap_error: str | None,
    *,
    pins: PinStore | PgPinStore,
    config: Config,
) -> tuple[str, str | None, str | None]:
    """A tool's in-band signature against the upstream's own (pinned) key:
    (status, reason, key fingerprint)."""
    if snapshot is None:
        return (
            "failed",
            snap_error
            or (
                f"signed in-band, but no key to check it: configure servers.{info.upstream}.domain "
                f"(organisation keys sign only through servers.{info.upstream}.approved)"
            ),
            None,
        )
    try:
        res = verify_tool(
            definition,
            signature,
            domain=domain,
            tool_id=info.original_name,
            key_source=snapshot,
            mode="strict" if mode in ("strict", "warn") else "tofu",
            pin_store=pins,
            digest_mode=config.servers[info.upstream].signature_digest,
            require_low_s=config.mcp.require_low_s_signatures,
        )
    except KeyRevoked as e:
        return "revoked", f"{e.code}: {e}", snapshot.fingerprint
    except (DefinitionChanged, KeyPinMismatch) as e:
        return "drifted", f"{e.code}: {e}", snapshot.fingerprint
    except SchemaPinError as e:
        return "failed", f"{e.code}: {e}", None
    return "verified", None, res.key_fingerprint


def check_manifest(
    envelope: dict[str, Any],
    h: str,
    snapshot: KeySnapshot | None,
    *,
    org_keys: list[KeySnapshot],
    config: Config,
) -> tuple[str, str | None, str | None]:
    """An approved-manifest entry: signed by a trusted key, for this definition hash."""
    keys = list(org_keys) + ([snapshot] if snapshot is not None else [])
    if not keys:
        return (
            "failed",
            "approved manifest present but no organisation key (mcp.org_keys) to check it",
            None,
        )
    for key in keys:
        try:
            res = verify_tool(
                envelope["schema"],
                envelope["signature"],
                domain=None,
                tool_id=None,
                key_source=key,
                require_low_s=config.mcp.require_low_s_signatures,
            )
        except SchemaPinError:
            continue
        if res.definition_hash != h:
            return "drifted", drift_reason(res.definition_hash, h), res.key_fingerprint
        return "verified", None, res.key_fingerprint
    return "failed", "approved manifest entry is not signed by a trusted key", None


def drift_reason(approved: str, now: str) -> str:
    return (
        f"tool definition changed since it was approved (approved {approved[:12]}, now {now[:12]}): "
        "blocked until `symbi tools approve`"
    )
