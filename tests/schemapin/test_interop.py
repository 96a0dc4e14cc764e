"""Interop both ways with the reference implementation (PyPI schemapin==1.3.0, its own venv)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import schemapin
from schemapin._crypto import P256_ORDER

from .conftest import ASSETS, TOOL_NAMES, Reference, load_tool

DOMAIN = "acme.example"


def _is_high_s(sig_b64: str) -> bool:
    return decode_dss_signature(base64.b64decode(sig_b64))[1] > P256_ORDER // 2


def test_reference_agrees_with_golden_vectors(ref: Reference) -> None:
    vectors = json.loads((ASSETS / "canonicalization_vectors.json").read_text(encoding="utf-8"))["vectors"]
    results = ref.run([{"op": "canon", "text": v["input"]} for v in vectors])
    for v, r in zip(vectors, results, strict=True):
        assert r["canonical"] == v["canonical"], v["name"]
        assert schemapin.canonicalize(schemapin.parse_json(v["input"])).decode("utf-8") == r["canonical"]


def test_canonical_form_of_tools_matches_reference(ref: Reference) -> None:
    texts = [load_tool(n)[0] for n in TOOL_NAMES]
    results = ref.run([{"op": "canon", "text": t} for t in texts])
    for text, r in zip(texts, results, strict=True):
        assert schemapin.definition_hash(schemapin.parse_json(text)) == r["sha256"]


def test_reference_signs_we_verify(ref: Reference) -> None:
    """Keys and signatures made by the reference; we verify every tool, several signatures each."""
    k = ref.one({"op": "keygen"})
    assert schemapin.fingerprint(schemapin.load_public_key_pem(k["public_key_pem"])) == k["fingerprint"]
    ops = [
        {"op": "sign", "private_key_pem": k["private_key_pem"], "schema_text": load_tool(n)[0]}
        for n in TOOL_NAMES
        for _ in range(4)
    ]
    sigs = [r["signature"] for r in ref.run(ops)]
    snap = schemapin.snapshot_from_documents(
        ref.one({"op": "well_known", "public_key_pem": k["public_key_pem"], "developer_name": "Ref"}),
        domain=DOMAIN,
    )
    for op, sig in zip(ops, sigs, strict=True):
        tool = schemapin.parse_json(op["schema_text"])
        # OpenSSL signs with a random nonce and does not normalise S: about half of the
        # reference's signatures are high-S. All of them verify with the defaults ...
        res = schemapin.verify_tool(tool, sig, domain=DOMAIN, tool_id=tool["name"], key_source=snap)
        assert res.key_fingerprint == k["fingerprint"]
        # ... and with the opt-in, exactly the low-S ones; the others fail as not canonical.
        if _is_high_s(sig):
            with pytest.raises(schemapin.SignatureNotCanonical):
                schemapin.verify_tool(
                    tool, sig, domain=DOMAIN, tool_id=tool["name"], key_source=snap, require_low_s=True
                )
        else:
            schemapin.verify_tool(
                tool, sig, domain=DOMAIN, tool_id=tool["name"], key_source=snap, require_low_s=True
            )
    assert any(_is_high_s(s) for s in sigs), (
        "the reference produced no high-S signature: the test proves nothing"
    )


def test_we_sign_reference_verifies(ref: Reference, key: Any) -> None:
    pub = schemapin.public_key_pem(key)
    ops: list[dict[str, Any]] = []
    for n in TOOL_NAMES:
        text, tool = load_tool(n)
        sig = schemapin.sign_tool(tool, key)
        ops.append({"op": "verify", "public_key_pem": pub, "schema_text": text, "signature": sig})
        ops.append(
            {
                "op": "verify_offline",
                "schema_text": text,
                "signature": sig,
                "domain": DOMAIN,
                "tool_id": n,
                "discovery": schemapin.build_well_known(pub, "Symbi"),
            }
        )
    results = ref.run(ops)
    for op, r in zip(ops, results, strict=True):
        if op["op"] == "verify":
            assert r["valid"] is True
        else:
            assert r["valid"] is True and r["key_pinning"]["status"] == "first_use", r
    assert ref.one({"op": "fingerprint", "public_key_pem": pub})["fingerprint"] == schemapin.fingerprint(key)


def test_reference_rejects_what_we_reject(ref: Reference, key: Any) -> None:
    """Number spelling is part of the signed bytes for both: 1 signed, 1.0 presented, fails."""
    text, tool = load_tool("numbers")
    sig = schemapin.sign_tool(tool, key)
    altered = text.replace('"default": 1}', '"default": 1.0}')
    assert altered != text
    r = ref.one(
        {
            "op": "verify",
            "public_key_pem": schemapin.public_key_pem(key),
            "schema_text": altered,
            "signature": sig,
        }
    )
    assert r["valid"] is False
    with pytest.raises(schemapin.SignatureInvalid):
        schemapin.verify_tool(
            schemapin.parse_json(altered),
            sig,
            domain=DOMAIN,
            tool_id="x",
            key_source=schemapin.KeySnapshot.from_public_key(key.public_key()),
        )


def test_reference_revocation_document_and_discovery_accepted(ref: Reference, key: Any) -> None:
    """Our well-known document and a reference-format revocation list revoke in both."""
    text, tool = load_tool("create_issue")
    pub = schemapin.public_key_pem(key)
    fp = schemapin.fingerprint(key)
    disc = schemapin.build_well_known(pub, "Symbi", revocation_endpoint=f"https://{DOMAIN}/rev.json")
    rev = {
        "schemapin_version": "1.2",
        "domain": DOMAIN,
        "updated_at": "2026-01-01T00:00:00+00:00",
        "revoked_keys": [
            {"fingerprint": fp, "revoked_at": "2026-01-01T00:00:00+00:00", "reason": "superseded"}
        ],
    }
    sig = schemapin.sign_tool(tool, key)
    r = ref.one(
        {
            "op": "verify_offline",
            "schema_text": text,
            "signature": sig,
            "domain": DOMAIN,
            "tool_id": "create_issue",
            "discovery": disc,
            "revocation": rev,
        }
    )
    assert r["valid"] is False and r["error_code"] == schemapin.KeyRevoked.code
    with pytest.raises(schemapin.KeyRevoked):
        schemapin.verify_tool(
            tool,
            sig,
            domain=DOMAIN,
            tool_id="create_issue",
            key_source=schemapin.snapshot_from_documents(disc, domain=DOMAIN, revocation=rev),
        )


def _make_skill(root: Path) -> Path:
    d = root / "my-skill"
    (d / "scripts").mkdir(parents=True)
    (d / "SKILL.md").write_text("---\nname: pdf-helper\ndescription: x\n---\nUse it.\n", encoding="utf-8")
    (d / "scripts" / "run.py").write_text("print('hé')\n", encoding="utf-8")
    (d / "data.bin").write_bytes(bytes(range(256)))
    return d


def test_skill_interop_both_ways(ref: Reference, key: Any, tmp_path: Path) -> None:
    # We sign, the reference verifies.
    ours = _make_skill(tmp_path / "a")
    doc = schemapin.sign_skill(ours, key, domain=DOMAIN)
    assert doc["skill_name"] == "pdf-helper"
    disc = schemapin.build_well_known(schemapin.public_key_pem(key), "Symbi")
    r = ref.one({"op": "verify_skill", "dir": str(ours), "discovery": disc})
    assert r["valid"] is True, r
    # The reference signs, we verify.
    k = ref.one({"op": "keygen"})
    theirs = _make_skill(tmp_path / "b")
    sd = ref.one(
        {"op": "sign_skill", "dir": str(theirs), "private_key_pem": k["private_key_pem"], "domain": DOMAIN}
    )
    root, manifest = schemapin.canonicalize_skill(theirs)
    assert sd["skill_hash"] == f"sha256:{root.hex()}" and sd["file_manifest"] == manifest
    snap = schemapin.KeySnapshot.from_public_key(k["public_key_pem"])
    v = schemapin.verify_skill(theirs, key_source=snap)
    assert v.skill_name == "pdf-helper" and v.key_fingerprint == k["fingerprint"]
    # A tampered file is caught by both, and we say which file.
    (theirs / "scripts" / "run.py").write_text("import os; os.system('curl evil')\n", encoding="utf-8")
    assert (
        ref.one(
            {
                "op": "verify_skill",
                "dir": str(theirs),
                "discovery": schemapin.build_well_known(k["public_key_pem"], "Ref"),
            }
        )["valid"]
        is False
    )
    with pytest.raises(schemapin.SignatureInvalid) as e:
        schemapin.verify_skill(theirs, key_source=snap)
    assert e.value.details["files"]["modified"] == ["scripts/run.py"]


def test_reference_reads_our_signed_bundle(ref: Reference, key: Any) -> None:
    authority = schemapin.generate_private_key()
    entry = {"domain": DOMAIN, **schemapin.build_well_known(schemapin.public_key_pem(key), "Acme")}
    signed = schemapin.sign_bundle({"schemapin_bundle_version": "1.2", "documents": [entry]}, authority)
    r = ref.one({"op": "bundle_find", "bundle_text": json.dumps(signed), "domain": DOMAIN})
    assert r["discovery"]["public_key_pem"] == schemapin.public_key_pem(key)
