"""Drive the SchemaPin reference (PyPI schemapin==1.3.0) for interop tests.

Run ONLY with the reference venv's python (scripts/schemapin-reference.sh makes it), never
with the project's .venv: both packages import as ``schemapin``.

Protocol: a JSON list of operations on stdin, a JSON list of results on stdout (one
interpreter start for many operations). Schema texts are parsed with stdlib ``json``, as the
reference's own CLI does.
"""

import json
import sys
from typing import Any

from schemapin.bundle import SchemaPinTrustBundle
from schemapin.core import SchemaPinCore
from schemapin.crypto import KeyManager, SignatureManager
from schemapin.revocation import RevocationDocument
from schemapin.skill import SkillSigner
from schemapin.utils import SchemaSigningWorkflow, create_well_known_response
from schemapin.verification import KeyPinStore, verify_schema_offline


def run(op: dict[str, Any]) -> object:
    """One operation's result: a JSON value (the reference is untyped)."""
    kind = op["op"]
    if kind == "canon":
        obj = json.loads(op["text"])
        return {
            "canonical": SchemaPinCore.canonicalize_schema(obj),
            "sha256": SchemaPinCore.canonicalize_and_hash(obj).hex(),
        }
    if kind == "keygen":
        priv, pub = KeyManager.generate_keypair()
        return {
            "private_key_pem": KeyManager.export_private_key_pem(priv),
            "public_key_pem": KeyManager.export_public_key_pem(pub),
            "fingerprint": KeyManager.calculate_key_fingerprint(pub),
        }
    if kind == "fingerprint":
        return {"fingerprint": KeyManager.calculate_key_fingerprint_from_pem(op["public_key_pem"])}
    if kind == "sign":
        sig = SchemaSigningWorkflow(op["private_key_pem"]).sign_schema(json.loads(op["schema_text"]))
        return {"signature": sig}
    if kind == "verify":
        pub = KeyManager.load_public_key_pem(op["public_key_pem"])
        h = SchemaPinCore.canonicalize_and_hash(json.loads(op["schema_text"]))
        return {"valid": SignatureManager.verify_schema_signature(h, op["signature"], pub)}
    if kind == "verify_offline":
        rev = RevocationDocument.from_dict(op["revocation"]) if op.get("revocation") else None
        res = verify_schema_offline(
            json.loads(op["schema_text"]),
            op["signature"],
            op["domain"],
            op["tool_id"],
            op["discovery"],
            rev,
            KeyPinStore(),
        )
        return res.to_dict()
    if kind == "well_known":
        return create_well_known_response(op["public_key_pem"], op["developer_name"])
    if kind == "sign_skill":
        return SkillSigner.sign_skill(op["dir"], op["private_key_pem"], op["domain"])
    if kind == "verify_skill":
        return SkillSigner.verify_skill_offline(op["dir"], op["discovery"]).to_dict()
    if kind == "bundle_find":
        bundle = SchemaPinTrustBundle.from_json(op["bundle_text"])
        return {"discovery": bundle.find_discovery(op["domain"])}
    raise ValueError(f"unknown op {kind!r}")


def main() -> None:
    ops = json.load(sys.stdin)
    out = []
    for op in ops:
        try:
            out.append({"ok": True, "result": run(op)})
        except Exception as e:  # noqa: BLE001 - report, do not crash: the test decides what an error means
            out.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
