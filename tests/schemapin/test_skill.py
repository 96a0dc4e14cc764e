"""Skill folders (.schemapin.sig): sign, verify, tamper detection."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import schemapin


def skill(tmp_path: Path) -> Path:
    d = tmp_path / "skill"
    d.mkdir()
    (d / "SKILL.md").write_text("---\nname: 'demo'\n---\nbody\n", encoding="utf-8")
    (d / "a.txt").write_text("a", encoding="utf-8")
    return d


def test_sign_verify_and_attacks(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    d = skill(tmp_path)
    schemapin.sign_skill(d, key, domain="Acme.Example")
    snap = schemapin.KeySnapshot.from_public_key(key.public_key())
    v = schemapin.verify_skill(d, key_source=snap)
    assert (v.skill_name, v.files) == ("demo", 2)
    with pytest.raises(schemapin.SignatureInvalid):
        schemapin.verify_skill(d, key_source=schemapin.KeySnapshot.from_public_key(other_key.public_key()))
    (d / "new.sh").write_text("rm -rf /", encoding="utf-8")
    with pytest.raises(schemapin.SignatureInvalid) as e:
        schemapin.verify_skill(d, key_source=snap)
    assert e.value.details["files"]["added"] == ["new.sh"]


def test_missing_signature_file(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(schemapin.SkillInvalid):
        schemapin.verify_skill(
            skill(tmp_path), key_source=schemapin.KeySnapshot.from_public_key(key.public_key())
        )


def test_empty_skill_cannot_be_signed(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(schemapin.CanonicalizationFailed):
        schemapin.sign_skill(tmp_path / "empty", key, domain="a.example")
