"""Skill folder signing (SchemaPin 1.3 ``.schemapin.sig``), interoperable with the reference.

Canonical form (the reference's): walk the folder with sorted ``os.walk``; skip
``.schemapin.sig`` and symlinks; per file ``sha256(posix_relpath_utf8 || bytes)`` hex; root =
``sha256("".join(hex digests sorted by path))``; signature = ECDSA-SHA256 over the 32 root bytes.
Only the root hash is authenticated: ``skill_name``, ``domain`` and ``signed_at`` are not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ._canonical import parse_json
from ._crypto import fingerprint, fingerprints_equal, sign_hash, verify_hash
from ._discovery import KeySnapshot
from ._domain import normalize_domain
from ._errors import (
    CanonicalizationFailed,
    DomainMismatch,
    KeyRevoked,
    RevocationUnavailable,
    SchemaPinError,
    SignatureInvalid,
    SkillInvalid,
)

SIGNATURE_FILENAME = ".schemapin.sig"
SKILL_SCHEMAPIN_VERSION = "1.3"
_NAME_RE = re.compile(r"^name:\s*['\"]?([^'\"#\n]+?)['\"]?\s*$", re.MULTILINE)


def canonicalize_skill(skill_dir: str | os.PathLike[str]) -> tuple[bytes, dict[str, str]]:
    """Return ``(root_hash, manifest)`` exactly as the reference computes them.

    Raises ``CanonicalizationFailed`` when the folder has no signable files.
    """
    root = Path(skill_dir).resolve()
    manifest: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name == SIGNATURE_FILENAME:
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                continue
            rel = full.relative_to(root).as_posix()
            manifest[rel] = "sha256:" + hashlib.sha256(rel.encode("utf-8") + full.read_bytes()).hexdigest()
    if not manifest:
        raise CanonicalizationFailed(f"skill folder {skill_dir} has no signable files")
    joined = "".join(manifest[k].split(":", 1)[1] for k in sorted(manifest))
    return hashlib.sha256(joined.encode("utf-8")).digest(), manifest


def skill_name(skill_dir: str | os.PathLike[str]) -> str:
    """The ``name:`` from SKILL.md front matter, else the folder name (as the reference)."""
    path = Path(skill_dir)
    md = path / "SKILL.md"
    if md.is_file():
        try:
            fm = re.search(r"^---\s*\n(.*?)\n---", md.read_text(encoding="utf-8"), re.DOTALL)
        except (OSError, UnicodeDecodeError):
            fm = None
        if fm:
            m = _NAME_RE.search(fm.group(1))
            if m:
                return m.group(1).strip()
    return path.resolve().name


def sign_skill(
    skill_dir: str | os.PathLike[str],
    private_key: ec.EllipticCurvePrivateKey,
    *,
    domain: str,
    name: str | None = None,
) -> dict[str, Any]:
    """Sign a skill folder and write ``.schemapin.sig``; returns the signature document."""
    root_hash, manifest = canonicalize_skill(skill_dir)
    doc: dict[str, Any] = {
        "schemapin_version": SKILL_SCHEMAPIN_VERSION,
        "skill_name": name if name is not None else skill_name(skill_dir),
        "skill_hash": f"sha256:{root_hash.hex()}",
        "signature": sign_hash(root_hash, private_key),
        "signed_at": datetime.now(UTC).isoformat(),
        "domain": normalize_domain(domain),
        "signer_kid": fingerprint(private_key),
        "file_manifest": manifest,
    }
    (Path(skill_dir) / SIGNATURE_FILENAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


@dataclass(frozen=True)
class SkillVerification:
    """A verified skill folder."""

    skill_name: str
    domain: str | None
    skill_hash: str
    key_fingerprint: str
    files: int


def _diff(current: dict[str, str], signed: Any) -> dict[str, list[str]]:
    signed_m = signed if isinstance(signed, dict) else {}
    return {
        "modified": sorted(k for k in current.keys() & signed_m.keys() if current[k] != signed_m[k]),
        "added": sorted(current.keys() - signed_m.keys()),
        "removed": sorted(signed_m.keys() - current.keys()),
    }


def verify_skill(
    skill_dir: str | os.PathLike[str],
    *,
    key_source: KeySnapshot,
    domain: str | None = None,
    mode: str = "strict",
    require_low_s: bool = False,
) -> SkillVerification:
    """Verify a skill folder's ``.schemapin.sig`` against ``key_source``.

    Raises ``SkillInvalid`` (missing/malformed signature file), ``SignatureInvalid`` (with a
    ``modified/added/removed`` file diff in ``details``), ``KeyRevoked``, ``DomainMismatch``
    or ``RevocationUnavailable`` (strict mode).
    """
    sig_path = Path(skill_dir) / SIGNATURE_FILENAME
    try:
        doc = parse_json(sig_path.read_bytes(), max_depth=8)
    except FileNotFoundError:
        raise SkillInvalid(f"no {SIGNATURE_FILENAME} in {skill_dir}") from None
    except SchemaPinError as e:
        raise SkillInvalid(f"{sig_path} is not strict JSON: {e.message}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("signature"), str):
        raise SkillInvalid(f"{sig_path} has no signature")
    dom = normalize_domain(domain) if domain else None
    if dom is not None and key_source.domain is not None and key_source.domain != dom:
        raise DomainMismatch(f"key material is for {key_source.domain}, not {dom}")
    if key_source.is_revoked():
        raise KeyRevoked(f"key {key_source.fingerprint} is revoked", key_fingerprint=key_source.fingerprint)
    if key_source.revocation != "checked" and mode == "strict":
        raise RevocationUnavailable(f"revocation state unknown: {key_source.revocation_error}")
    kid = doc.get("signer_kid")
    if isinstance(kid, str) and not fingerprints_equal(kid, key_source.fingerprint):
        raise SignatureInvalid(f"signed by {kid}, not by {key_source.fingerprint}", signer_kid=kid)
    root_hash, manifest = canonicalize_skill(skill_dir)
    try:
        verify_hash(root_hash, doc["signature"], key_source.public_key, require_low_s=require_low_s)
    except SignatureInvalid as e:
        e.details["files"] = _diff(manifest, doc.get("file_manifest"))
        raise
    claimed = doc.get("skill_hash")
    if claimed is not None and claimed != f"sha256:{root_hash.hex()}":
        raise SignatureInvalid("skill_hash does not match the signed root hash", skill_hash=claimed)
    name = doc.get("skill_name")
    return SkillVerification(
        skill_name=name if isinstance(name, str) else skill_name(skill_dir),
        domain=dom,
        skill_hash=f"sha256:{root_hash.hex()}",
        key_fingerprint=key_source.fingerprint,
        files=len(manifest),
    )
