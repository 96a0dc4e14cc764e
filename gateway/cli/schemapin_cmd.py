"""``symbi schemapin``: keygen, sign, verify, wellknown, pins, skill -- thin, over ``schemapin``.

Exit codes: 0 valid / done, 1 invalid or refused (reason and error code printed; ``--json``
for machines; ``pins approve`` or ``pins reject`` of a pending change that does not name it,
or names another: ``reviewed_hash_required`` / ``definition_changed``), 2 usage error (bad arguments,
unreadable input file, bad config).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from gateway.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, HELP
from gateway.errors import ApprovalError

# schemapin (httpx, its resolver: ~0.35 s of CPU with asyncio) is imported as a sub-command
# runs, not at `symbi schemapin`'s parse
if TYPE_CHECKING:
    from gateway.state.pins import PgPinStore
    from schemapin import KeySnapshot, Pin, PinStore

_Pins: TypeAlias = "PinStore | PgPinStore"  # the file store, or the shared one (PostgreSQL)


class _Usage(Exception):
    """A usage problem (missing file, conflicting options): exit 2."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("schemapin", help=HELP["schemapin"])
    ss = p.add_subparsers(dest="schemapin_command", metavar="SUBCOMMAND", required=True)
    for add in (_add_keygen, _add_sign, _add_verify, _add_wellknown, _add_pins, _add_skill):
        add(ss)


def _add_keygen(ss: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = ss.add_parser("keygen", help="make an ECDSA P-256 key pair (private_key.pem 0600, public_key.pem)")
    k.add_argument("--out", type=Path, required=True, help="directory to write the keys to")
    k.add_argument("--force", action="store_true", help="overwrite existing key files")
    _common(k)
    k.set_defaults(func=_run(_keygen))


def _add_sign(ss: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = ss.add_parser(
        "sign", help="sign a tool definition: writes the envelope {schema, signature, signed_at}"
    )
    s.add_argument("--key", type=Path, required=True, help="PKCS#8 PEM private key")
    s.add_argument(
        "tool", type=Path, help="tool definition JSON (signed exactly as written, `_meta` stripped)"
    )
    s.add_argument("--out", type=Path, help="write the envelope here (default stdout)")
    s.add_argument("--keep-meta", action="store_true", help="do not strip `_meta` before signing")
    _common(s)
    s.set_defaults(func=_run(_sign))


def _add_verify(ss: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    v = ss.add_parser("verify", help="verify an envelope against a key or a domain's discovery document")
    v.add_argument("envelope", type=Path, help="envelope JSON {schema, signature, ...}")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--public-key", type=Path, help="verify against this SPKI PEM public key")
    src.add_argument("--domain", help="verify against this domain's key (.well-known or --discovery)")
    v.add_argument(
        "--discovery", help="discovery document FILE or URL (default https://DOMAIN/.well-known/...)"
    )
    v.add_argument("--revocation", type=Path, help="standalone revocation document FILE (offline)")
    v.add_argument("--tool-id", help="id to pin under (default: the schema's name)")
    v.add_argument(
        "--mode",
        choices=("strict", "tofu"),
        default="strict",
        help="strict: unknown revocation state is a failure; tofu: a warning",
    )
    v.add_argument("--pins", type=Path, help="pin store to check and update (needs --domain)")
    v.add_argument(
        "--require-low-s",
        action="store_true",
        help="refuse high-S signatures (the reference and other SDKs produce them half the time)",
    )
    v.add_argument("--single-hash", action="store_true", help="Go-SDK signatures: ECDSA over one SHA-256")
    v.add_argument("--ca-file", help="CA bundle for HTTPS discovery (default: system CAs)")
    v.add_argument(
        "--insecure-http", action="store_true", help="allow http:// discovery (tests only; logged)"
    )
    v.add_argument("--timeout", type=float, default=10.0, help="discovery timeout in seconds")
    _common(v)
    v.set_defaults(func=_run(_verify))


def _add_wellknown(ss: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    w = ss.add_parser("wellknown", help="print a .well-known/schemapin.json document")
    w.add_argument("--public-key", type=Path, required=True)
    w.add_argument("--developer", required=True, help="developer name")
    w.add_argument("--contact")
    w.add_argument("--revocation-endpoint")
    w.add_argument(
        "--revoked", action="append", default=[], metavar="FINGERPRINT", help="a revoked key (repeat)"
    )
    w.add_argument("--schema-version", default="1.2")
    _common(w)
    w.set_defaults(func=_run(_wellknown))


def _add_pins(ss: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pins = ss.add_parser("pins", help="list, show, approve, reject or remove TOFU pins")
    ps = pins.add_subparsers(dest="pins_command", metavar="ACTION", required=True)
    for name, hlp in (
        ("list", "list pins"),
        ("show", "show one pin and its history"),
        ("approve", "accept the pending key/definition change you reviewed with show (or pin given values)"),
        ("reject", "turn down the pending key/definition change you reviewed with show: the pin stays"),
        ("remove", "delete a pin"),
    ):
        q = ps.add_parser(name, help=hlp)
        q.add_argument(
            "--pins",
            type=Path,
            help="pin store (default: from --config: PostgreSQL with [state] postgres_url, else <data_dir>/pins.db)",
        )
        q.add_argument("--config", type=Path, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
        if name == "list":
            q.add_argument("--domain")
        else:
            q.add_argument("--domain", required=True)
            q.add_argument("--tool", required=True, help="tool id")
        if name == "approve":
            q.add_argument(
                "--fingerprint",
                help="the key fingerprint to pin (sha256:<64 hex>): for a pending key change, the "
                "pending_fingerprint `pins show` printed; refused if the pending key is another",
            )
            q.add_argument(
                "--definition-hash",
                help="the definition hash to pin (64 hex): for a pending definition change, the "
                "pending_definition_hash `pins show` printed; refused if the pending one is another",
            )
        if name == "reject":
            q.add_argument(
                "--fingerprint",
                help="the pending_fingerprint `pins show` printed (sha256:<64 hex>), for a pending "
                "key change; refused if the pending key is another",
            )
            q.add_argument(
                "--definition-hash",
                help="the pending_definition_hash `pins show` printed (64 hex), for a pending "
                "definition change; refused if the pending one is another",
            )
        if name in ("approve", "reject", "remove"):
            q.add_argument("--actor", help="who approves, rejects or removes (recorded; default $USER)")
        _common(q)
        q.set_defaults(func=_run(_pins))


def _add_skill(ss: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sk = ss.add_parser("skill", help="sign or verify a skill folder (.schemapin.sig)")
    sks = sk.add_subparsers(dest="skill_command", metavar="ACTION", required=True)
    a = sks.add_parser("sign", help="sign a skill folder")
    a.add_argument("dir", type=Path)
    a.add_argument("--key", type=Path, required=True)
    a.add_argument("--domain", required=True)
    _common(a)
    a.set_defaults(func=_run(_skill_sign))
    b = sks.add_parser("verify", help="verify a skill folder")
    b.add_argument("dir", type=Path)
    b.add_argument("--public-key", type=Path, required=True)
    b.add_argument("--require-low-s", action="store_true", help="refuse high-S signatures")
    _common(b)
    b.set_defaults(func=_run(_skill_verify))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run(fn: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        from schemapin import SchemaPinError

        try:
            return int(fn(args))
        except _Usage as e:
            print(f"symbi schemapin: {e}", file=sys.stderr)
            return EXIT_USAGE
        except SchemaPinError as e:
            _invalid(args, e.to_dict())
            return EXIT_FAIL
        except ApprovalError as e:  # a pin approval or rejection not naming the pending change reviewed
            _invalid(args, {"valid": False, "error_code": e.code, "error_message": e.message})
            return EXIT_FAIL

    return wrapper


def _invalid(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc, ensure_ascii=False, default=str))
    else:
        print(f"INVALID [{doc['error_code']}]: {doc['error_message']}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _Usage(f"cannot read {path}: {e.strerror}") from None


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, ensure_ascii=False, indent=None if args.json else 2) if args.json else text)


# --- sub-commands -----------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    import schemapin

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / "private_key.pem", out / "public_key.pem"
    if not args.force and (priv_path.exists() or pub_path.exists()):
        raise _Usage(f"{priv_path} or {pub_path} exists (use --force to overwrite)")
    key = schemapin.generate_private_key()
    if priv_path.exists():
        priv_path.unlink()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(schemapin.private_key_pem(key))
    pub_path.write_text(schemapin.public_key_pem(key), encoding="ascii")
    fp = schemapin.fingerprint(key)
    _emit(
        args,
        {"private_key": str(priv_path), "public_key": str(pub_path), "fingerprint": fp},
        f"wrote {priv_path} (0600) and {pub_path}\nfingerprint {fp}",
    )
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    import schemapin

    key = schemapin.load_private_key_pem(_read(args.key))
    tool = schemapin.parse_json(_read(args.tool))
    if not isinstance(tool, dict):
        raise _Usage(f"{args.tool} is not a JSON object")
    if not args.keep_meta:
        tool.pop("_meta", None)  # the in-band carrier is never part of the signed object
    env = schemapin.sign_envelope(tool, key)
    text = json.dumps(env, ensure_ascii=False, indent=2) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _snapshot(args: argparse.Namespace) -> KeySnapshot:
    import asyncio

    import schemapin

    if args.public_key:
        if args.discovery or args.pins:
            raise _Usage("--discovery and --pins need --domain, not --public-key")
        return schemapin.KeySnapshot.from_public_key(_read(args.public_key).decode("ascii", "replace"))
    domain = args.domain
    verify: Any = args.ca_file or True
    resolver = schemapin.WellKnownResolver(
        timeout=args.timeout, allow_insecure_http=args.insecure_http, verify=verify, ttl=0
    )
    if args.discovery and not args.discovery.startswith(("https://", "http://")):
        disc = schemapin.load_discovery_text(_read(Path(args.discovery)), max_bytes=64 * 1024)
        rev = None
        if args.revocation:
            rev = schemapin.load_discovery_text(_read(args.revocation), max_bytes=1024 * 1024)
        return schemapin.snapshot_from_documents(disc, domain=domain, revocation=rev, source=args.discovery)
    if args.revocation:
        raise _Usage("--revocation applies to a discovery FILE only")
    if args.discovery:
        return asyncio.run(resolver.fetch_url(args.discovery, domain=domain))
    return asyncio.run(resolver.resolve(domain))


def _verify(args: argparse.Namespace) -> int:
    import schemapin

    envelope = schemapin.parse_json(_read(args.envelope))
    snap = _snapshot(args)
    pins = schemapin.PinStore(args.pins) if args.pins else None
    try:
        res = schemapin.verify_envelope(
            envelope,
            key_source=snap,
            domain=args.domain,
            tool_id=args.tool_id,
            mode=args.mode,
            pin_store=pins,
            digest_mode="single" if args.single_hash else "double",
            require_low_s=args.require_low_s,
        )
    finally:
        if pins is not None:
            pins.close()
    warn = f" (warnings: {', '.join(res.warnings)})" if res.warnings else ""
    _emit(
        args,
        res.to_dict(),
        f"VALID [{res.status}] {res.tool_id or '-'}@{res.domain or '-'} key {res.key_fingerprint} "
        f"definition {res.definition_hash}{warn}",
    )
    return EXIT_OK


def _wellknown(args: argparse.Namespace) -> int:
    import schemapin

    doc = schemapin.build_well_known(
        _read(args.public_key).decode("ascii", "replace"),
        args.developer,
        contact=args.contact,
        revoked_keys=args.revoked or None,
        revocation_endpoint=args.revocation_endpoint,
        schema_version=args.schema_version,
    )
    print(json.dumps(doc, ensure_ascii=False, indent=None if args.json else 2))
    return EXIT_OK


@contextlib.contextmanager
def _open_pins(args: argparse.Namespace) -> Iterator[PinStore | PgPinStore]:
    """--pins FILE; else the config's: PostgreSQL when replicas share pins ([state]), or the
    data dir's. Closed (the file, or the command's PostgreSQL pool) when the block ends."""
    from gateway.cli.stores import Stores
    from gateway.config import load_config
    from schemapin import PinStore

    if args.pins:
        with PinStore(Path(args.pins)) as store:
            yield store
        return
    with Stores(load_config(args.config, args.environ)) as opened:
        found = opened.pins()
        if isinstance(found, Path):
            with PinStore(found) as store:
                yield store
        else:
            yield found


def _pin_marks(pin: Pin) -> str:
    """A listed pin's marks: a change pending review, and a rejected one (not pending: the
    upstream presenting it again is refused, not queued again)."""
    marks = " PENDING CHANGE" if pin.pending_fingerprint else ""
    if pin.rejected_fingerprint:
        marks += " REJECTED CHANGE" + (
            f" (presented again since {pin.rejected_seen})" if pin.rejected_seen else ""
        )
    return marks


def _pins(args: argparse.Namespace) -> int:
    with _open_pins(args) as store:
        return _PIN_COMMANDS[args.pins_command](args, store)


def _pins_list(args: argparse.Namespace, store: _Pins) -> int:
    pins = store.pins(args.domain)
    if args.json:
        print(json.dumps([p.to_dict() for p in pins]))
    for p in pins if not args.json else ():
        print(
            f"{p.tool_id}@{p.domain}  {p.key_fingerprint}  def {p.definition_hash[:16]}  "
            f"last {p.last_seen}{_pin_marks(p)}"
        )
    return EXIT_OK


def _pins_show(args: argparse.Namespace, store: _Pins) -> int:
    pin = store.get(args.domain, args.tool)
    if pin is None:
        raise _Usage(f"no pin for {args.tool}@{args.domain}")
    doc = {**pin.to_dict(), "history": store.history(args.domain, args.tool)}
    print(json.dumps(doc, ensure_ascii=False, indent=None if args.json else 2))
    return EXIT_OK


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or args.environ.get("USER") or "unknown")


def _pins_approve(args: argparse.Namespace, store: _Pins) -> int:
    from gateway.verify.approve import reviewed_pin_change

    # both values explicit: the store pins what the person named, never "the pending
    # one" as it is when the write happens (it can be swapped after the check)
    fp, h = reviewed_pin_change(
        store.get(args.domain, args.tool),
        args.domain,
        args.tool,
        fingerprint=args.fingerprint,
        definition_hash=args.definition_hash,
    )
    pin = store.approve(args.domain, args.tool, key_fingerprint=fp, definition_hash=h, actor=_actor(args))
    _emit(
        args,
        pin.to_dict(),
        f"approved {pin.tool_id}@{pin.domain}: key {pin.key_fingerprint} definition {pin.definition_hash}",
    )
    return EXIT_OK


def _pins_reject(args: argparse.Namespace, store: _Pins) -> int:
    from gateway.verify.approve import reject_pin_change

    pin = reject_pin_change(
        store,
        args.domain,
        args.tool,
        fingerprint=args.fingerprint,
        definition_hash=args.definition_hash,
        actor=_actor(args),
    )
    _emit(
        args,
        pin.to_dict(),
        f"rejected the pending change of {pin.tool_id}@{pin.domain}: still pinned to key "
        f"{pin.key_fingerprint} definition {pin.definition_hash}",
    )
    return EXIT_OK


def _pins_remove(args: argparse.Namespace, store: _Pins) -> int:
    if not store.remove(args.domain, args.tool, actor=_actor(args)):
        raise _Usage(f"no pin for {args.tool}@{args.domain}")
    _emit(args, {"removed": True}, f"removed {args.tool}@{args.domain}")
    return EXIT_OK


_PIN_COMMANDS: dict[str, Callable[[argparse.Namespace, _Pins], int]] = {
    "list": _pins_list,
    "show": _pins_show,
    "approve": _pins_approve,
    "reject": _pins_reject,
    "remove": _pins_remove,
}


def _skill_sign(args: argparse.Namespace) -> int:
    import schemapin

    if not args.dir.is_dir():
        raise _Usage(f"{args.dir} is not a directory")
    doc = schemapin.sign_skill(args.dir, schemapin.load_private_key_pem(_read(args.key)), domain=args.domain)
    _emit(args, doc, f"signed {doc['skill_name']} ({len(doc['file_manifest'])} files) {doc['skill_hash']}")
    return EXIT_OK


def _skill_verify(args: argparse.Namespace) -> int:
    import schemapin

    if not args.dir.is_dir():
        raise _Usage(f"{args.dir} is not a directory")
    snap = schemapin.KeySnapshot.from_public_key(_read(args.public_key).decode("ascii", "replace"))
    v = schemapin.verify_skill(args.dir, key_source=snap, require_low_s=args.require_low_s)
    _emit(args, {"valid": True, **v.__dict__}, f"VALID {v.skill_name} ({v.files} files) {v.skill_hash}")
    return EXIT_OK
