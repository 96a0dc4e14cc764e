"""``symbi tools``: the security team's view of upstream tools, on a running or stopped gateway.

- ``list``: every upstream tool with its verification state, key fingerprint, definition hash.
- ``diff SERVER__TOOL``: the approved definition against the current one, and its hash.
- ``approve SERVER__TOOL... --hash H... [--key ORG_PRIV.pem]``: approve the definitions reviewed
  (``H``: the hash ``diff`` printed, one per tool; refused if the current one differs), sign
  them into the upstream's approved manifest (``approved = ...``) and move the pins to them.
- ``approve SERVER... [--expect DIGEST...]``: approve discovered servers in quarantine as
  ``symbi discover list`` showed them (refused if the config changed since; without
  ``--expect``, the config printed then is approved).
- ``revoke SERVER__TOOL...``: block a tool in every mode until approved again.

A running gateway notices the change within ``mcp.recheck_interval_s``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import HELP
from gateway.errors import ApprovalError, ConfigError, GatewayError
from gateway.verify import MIN_HASH_HEX

# the stores, the approval code and the config models are imported as a command runs: at the
# top they were ~0.45 s of CPU in every `symbi tools ... --help` and parse error
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.cli import stores
    from gateway.config.model import Config
    from gateway.screen import Screening
    from gateway.verify.state import ToolRecord, ToolStates


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tools", help=HELP["tools"])
    tsub = p.add_subparsers(dest="tools_command", metavar="SUBCOMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")

    ls = tsub.add_parser("list", help="every upstream tool with its verification state")
    common(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)

    df = tsub.add_parser("diff", help="approved vs current definition of a drifted tool")
    common(df)
    df.add_argument("tool", help="SERVER__TOOL")
    df.set_defaults(func=_diff)

    ap = tsub.add_parser(
        "approve", help="approve the definitions reviewed with diff (--hash; signs them into the manifest)"
    )
    common(ap)
    ap.add_argument(
        "tools",
        nargs="+",
        metavar="SERVER__TOOL | SERVER",
        help="tools, or discovered servers in quarantine (symbi discover list)",
    )
    ap.add_argument(
        "--hash",
        dest="hashes",
        action="append",
        default=[],
        metavar="HASH",
        help="the definition hash `symbi tools diff` printed (at least "
        f"{MIN_HASH_HEX} hex digits), once per SERVER__TOOL in order; refused if the definition changed",
    )
    ap.add_argument(
        "--expect",
        dest="digests",
        action="append",
        default=[],
        metavar="DIGEST",
        help="the digest `symbi discover list` printed for a discovered SERVER, once per SERVER in "
        "order; refused if its config changed since (without it: the config printed now is approved)",
    )
    ap.add_argument("--key", type=Path, default=None, help="organisation private key (PEM) to sign with")
    ap.add_argument("--by", default=None, help="who approves (recorded in the manifest and the pin history)")
    ap.add_argument(
        "--accept-screening",
        action="store_true",
        help="approve even with high-severity screening findings (read them first: symbi scan)",
    )
    ap.set_defaults(func=_approve)

    rv = tsub.add_parser("revoke", help="block tools until they are approved again")
    common(rv)
    rv.add_argument("tools", nargs="+", metavar="SERVER__TOOL")
    rv.set_defaults(func=_revoke)


def _lookup(store: ToolStates, name: str) -> ToolRecord:
    rec = store.find(name)
    if rec is None:
        raise GatewayError(f"unknown tool {name!r} (see `symbi tools list`)")
    return rec


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[Config, stores.Stores]]:
    """The command's config and its stores (each opened as first used), closed on leaving.
    Imported here, as a command runs (the module's imports stay light)."""
    from gateway.cli import stores
    from gateway.config import load_config

    cfg = load_config(args.config, args.environ)
    with stores.Stores(cfg) as opened:
        yield cfg, opened


def _list(args: argparse.Namespace) -> int:
    from gateway.verify.approve import screen_record

    with _opened(args) as (cfg, opened):
        store = opened.tool_states()
        records = store.all()
        screened = {r.namespaced: screen_record(store, r) for r in records}
    _print_list(cfg, records, screened, as_json=args.json)
    return 0


def _print_list(
    cfg: Config, records: list[ToolRecord], screened: dict[str, Screening], *, as_json: bool
) -> None:
    if as_json:
        print(
            json.dumps(
                [{**r.to_dict(), "screening": screened[r.namespaced].as_input()} for r in records], indent=2
            )
        )
        return
    print(f"{'TOOL':44} {'STATUS':10} {'DRIFT':5} {'SCREENING':16} {'KEY':20} HASH")
    for r in records:
        s = screened[r.namespaced]
        flagged = s.at_least("medium")
        screen = f"{s.highest}:{','.join(sorted({f.rule for f in flagged}))}" if flagged else "-"
        print(
            f"{r.namespaced:44} {r.status + ('' if r.present else '*'):10} {'yes' if r.drifted else '-':5} "
            f"{screen[:16]:16} {(r.key_fingerprint or '-')[:20]:20} {r.current_hash or '-'}"
        )
    if any(not r.present for r in records):
        print("* no longer offered by its upstream")
    _quarantined(cfg)


def _quarantined(cfg: Config) -> None:
    """Discovered servers waiting for a person: pending like tools, but nothing of theirs runs."""
    from gateway.onboard.discovery import discovery_store

    waiting = [d for d in discovery_store(cfg).entries().values() if d.status == "quarantined"]
    for d in sorted(waiting, key=lambda d: d.name):
        print(
            f"{d.name + '__*':44} {'pending':10} {'-':5} {'-':16} quarantined: discovered in {d.source} "
            + (
                f"(not started; `symbi tools approve {d.name} --expect {d.digest()}`)"
                if (why := d.unresolved()) is None
                else f"(not started; cannot be approved: {why})"
            )
        )


def _diff(args: argparse.Namespace) -> int:
    with _opened(args) as (cfg, opened):
        return _print_diff(cfg, opened, _lookup(opened.tool_states(), args.tool))


def _print_diff(cfg: Config, opened: stores.Stores, rec: ToolRecord) -> int:
    from gateway.verify.approve import drift_diff, pin_review

    diff = drift_diff(rec)
    if not diff:
        print(f"{rec.namespaced}: no drift (status {rec.status}, definition {rec.current_hash})")
        return 0
    print(f"{rec.namespaced}: tool {rec.name!r} of upstream {rec.upstream}, status {rec.status}")
    sys.stdout.write(diff if diff.endswith("\n") else diff + "\n")  # difflib ends the last line bare
    srv = cfg.servers.get(rec.upstream)
    review = pin_review(opened.pins(), rec, srv.domain if srv else None)
    if review.rejected:  # `tools approve` refuses it: say so instead
        print(
            "signing key and definition: this change to the SchemaPin pin was rejected "
            "(`symbi schemapin pins reject`); to accept it after all, `symbi schemapin pins approve` naming it"
        )
        return 1
    if (keys := review.key_change) is not None:
        print(
            f"signing key: pinned {keys[0]}, this definition signed by {keys[1]}: approving it pins "
            "that key (to refuse the key, `symbi schemapin pins reject`)"
        )
    # the full hash: approving names this definition and no other the upstream swaps in later
    print(f"approve this definition: symbi tools approve {rec.namespaced} --hash {rec.current_hash}")
    return 1


def _approve(args: argparse.Namespace) -> int:
    servers = [n for n in args.tools if "__" not in n]
    tools = [n for n in args.tools if "__" in n]
    if args.hashes and len(args.hashes) != len(tools):  # before anything is approved
        raise ConfigError(
            f"one --hash per SERVER__TOOL, in the same order: {len(tools)} tool(s), {len(args.hashes)} hash(es)"
        )
    if args.digests and len(args.digests) != len(servers):
        raise ConfigError(
            f"one --expect per SERVER, in the same order: {len(servers)} server(s), {len(args.digests)} digest(s)"
        )
    with _opened(args) as (cfg, opened):  # (nothing opened before it is used: none for servers only)
        if servers:  # discovered servers in quarantine: approving one lets the gateway start it
            _approve_discovered(cfg, servers, args.digests, args.by)
        if tools:
            _approve_tools(cfg, opened, tools, args)
    return 0


def _approve_tools(cfg: Config, opened: stores.Stores, tools: list[str], args: argparse.Namespace) -> None:
    """Approve ``tools`` (the definitions reviewed, ``--hash``), on the command's stores."""
    from gateway.verify.approve import approve_current, check_screening
    from schemapin import definition_hash

    store, pins = opened.tool_states(), opened.pins()
    records = _reviewed_records(cfg, store, tools, args.hashes)
    flagged = []
    for rec, _ in records:  # screened again before anything is signed or approved
        if check_screening(store, rec, accept=args.accept_screening).at_least("high"):
            flagged.append(rec)
    key = _signing_key(args.key)
    by_upstream: dict[str, list[tuple[ToolRecord, str]]] = {}
    for rec, h in records:
        by_upstream.setdefault(rec.upstream, []).append((rec, h))
    _check_trusted_signer(cfg, key, by_upstream)  # before anything is signed or approved
    for upstream, recs in by_upstream.items():
        srv = cfg.servers.get(upstream)
        if srv is None:
            raise ConfigError(f"tool of upstream {upstream!r}, which is not in the config")
        if srv.approved is not None:
            _sign_into_manifest(srv.approved, upstream, [r for r, _ in recs], key, args.by)
        for rec, h in recs:
            if rec in flagged:  # the person read the findings and accepts them for this definition
                assert rec.current_definition is not None
                opened.accepted_findings().accept(rec.namespaced, definition_hash(rec.current_definition))
            approve_current(
                store, pins, rec, reviewed=h, domain=srv.domain, actor=args.by or "symbi tools approve"
            )
            print(
                f"approved {rec.namespaced} ({h[:16]})"
                + (" with its screening findings accepted" if rec in flagged else "")
            )


def _check_trusted_signer(
    cfg: Config, key: ec.EllipticCurvePrivateKey | None, upstreams: Iterable[str]
) -> None:
    """The manifest key must be one the gateway checks a manifest against: an ``mcp.org_keys``
    key, or (an upstream with a ``domain``) the key its domain publishes, which only the gateway's
    discovery can tell. Else the approval would be written and the tool stay blocked."""
    from gateway.verify.verifier import load_org_keys
    from schemapin import fingerprint

    if key is None:
        return  # no manifest to sign (or refused by _sign_into_manifest, naming the upstream)
    mine = fingerprint(key.public_key())
    org = {k.fingerprint for k in load_org_keys(cfg)}
    for upstream in upstreams:
        srv = cfg.servers.get(upstream)
        if srv is not None and srv.approved is not None and srv.domain is None and mine not in org:
            raise ConfigError(
                f"mcp.org_keys: --key ({mine}) is not among them, so the gateway would not accept "
                f"servers.{upstream}.approved signed with it; add its public key there or sign with one that is"
            )


def _reviewed_records(
    cfg: Config, store: ToolStates, names: list[str], hashes: list[str]
) -> list[tuple[ToolRecord, str]]:
    """Each tool's record as read now and the hash of its definition, refused (before anything
    is signed or approved) unless that is the definition reviewed (``hashes``, in order) and
    approving it here would admit it."""
    from gateway.verify.approve import check_reviewed, unsigned_under_strict

    records = [_lookup(store, n) for n in names]
    for rec in records:  # first: no hash makes such an approval do anything
        srv = cfg.servers.get(rec.upstream)
        mode = cfg.verification_for(rec.upstream)
        if srv is not None and (why := unsigned_under_strict(mode, srv.approved is not None, rec)):
            raise ConfigError(why)
    return [(rec, check_reviewed(rec, hashes[i] if hashes else None)) for i, rec in enumerate(records)]


def _approve_discovered(cfg: Config, names: list[str], digests: list[str], by: str | None) -> None:
    """Approve each of ``names`` as the person saw it (``digests``, from ``symbi discover list``);
    without them, as printed here before it is approved (a change after this read is refused)."""
    from gateway.onboard.discovery import discovery_store

    discovery = discovery_store(cfg)
    listed = {} if digests else discovery.entries()  # what is printed: read once, not once a name
    if not digests and (unlisted := [n for n in names if n not in listed]):
        # found after this read, it would be approved unseen: refused before any is approved
        raise ConfigError(
            f"no discovered server named {', '.join(map(repr, unlisted))} (see `symbi discover list`)"
        )
    for i, name in enumerate(names):
        seen = digests[i] if digests else listed[name].digest()
        if not digests:
            print(f"approving {name}: launches {listed[name].launches()} (digest {seen})")
        try:
            d = discovery.approve(name, by=by or "symbi tools approve", expect=seen)
        except ApprovalError as e:  # no such server: the argument is wrong (a usage error, exit 2)
            if e.status != 404:
                raise
            raise ConfigError(e.message) from None
        print(
            f"approved discovered server {d.name} ({d.original_name} from {d.source}): "
            "a running gateway with discovery on starts it within mcp.recheck_interval_s"
        )


def _signing_key(path: Path | None) -> ec.EllipticCurvePrivateKey | None:
    """The organisation's manifest key from ``--key`` (None without it)."""
    from schemapin import load_private_key_pem

    if path is None:
        return None
    try:
        return load_private_key_pem(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - any unreadable key is a usage error naming the file
        raise ConfigError(f"--key {path}: not a P-256 private key: {e}") from None


def _sign_into_manifest(
    manifest_path: Path,
    upstream: str,
    recs: list[ToolRecord],
    key: ec.EllipticCurvePrivateKey | None,
    by: str | None,
) -> None:
    """Sign each record's current definition into the upstream's approved manifest."""
    from gateway.verify.manifest import load_manifest, save_manifest
    from schemapin import fingerprint, sign_envelope

    if key is None:
        raise ConfigError(f"servers.{upstream}.approved is a signed manifest: give --key ORG_PRIV.pem")
    manifest = load_manifest(manifest_path, upstream=upstream)
    for rec in recs:
        assert rec.current_definition is not None
        manifest[rec.name] = sign_envelope(
            rec.current_definition,
            key,
            metadata={
                "key_fingerprint": fingerprint(key.public_key()),
                "approved_by": by,
                "upstream": upstream,
            },
        )
    save_manifest(manifest_path, upstream, manifest)


def _revoke(args: argparse.Namespace) -> int:
    with _opened(args) as (_, opened):
        store = opened.tool_states()
        for name in args.tools:
            rec = _lookup(store, name)
            store.revoke(rec.upstream, rec.name)
            print(f"revoked {rec.namespaced}")
    return 0
