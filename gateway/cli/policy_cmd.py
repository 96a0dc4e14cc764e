"""``symbi policy check|eval|test|push|reload|status``: the policy tooling, over ``gateway.policy``.

- ``check``: parse the policy and data, run the policy's ``*_test.rego`` files (like
  ``opa test``) and a canary evaluation; 0 usable, 1 not (the error names file:line:col).
- ``eval --input input.json``: print the decision JSON; 0 allow, 1 deny.
- ``test [--cases cases.json]``: run the ``test_*`` rules and a cases file of input ->
  expected decision; 0 all pass, 1 any fails.
- ``reload`` / ``status``: a running gateway's policy, through its admin API
  (``POST /api/policy/reload``, ``GET /api/policy/status``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, HELP, admin_client
from gateway.errors import ConfigError, PolicyLoadError

# the config and the policy engine (~0.5 s of CPU) are imported as a command runs, not at
# `symbi policy`'s parse
if TYPE_CHECKING:
    from gateway.config.model import Config
    from gateway.policy.engine import PolicyEngine
    from gateway.policy.loader import PolicyFiles


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("policy", help=HELP["policy"])
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
        sp.add_argument(
            "--policy",
            type=Path,
            default=None,
            help="Rego file (default: [policy] path, else the repo's policies.rego)",
        )
        sp.add_argument(
            "--data",
            type=Path,
            default=None,
            help="policy data JSON (default: [policy] data, else policies/data.json beside the policy)",
        )

    check = psub.add_parser("check", help="parse the policy and run its own tests (0 ok, 1 broken)")
    common(check)
    check.set_defaults(func=_check)

    ev = psub.add_parser("eval", help="print the decision for an input document (0 allow, 1 deny)")
    common(ev)
    ev.add_argument("--input", type=Path, required=True, help="input document (JSON); '-' reads stdin")
    ev.set_defaults(func=_eval)

    test = psub.add_parser("test", help="run *_test.rego (like opa test) and a cases file (0 all pass)")
    common(test)
    test.add_argument(
        "--cases",
        type=Path,
        default=None,
        help="cases JSON (default: policies/cases.json beside the policy, if present)",
    )
    test.add_argument("-v", "--verbose", action="store_true", help="print every test, not only failures")
    test.set_defaults(func=_test)

    push = psub.add_parser(
        "push", help='upload the policy and its data to the OPA server of [policy] engine = "opa"'
    )
    common(push)
    push.set_defaults(func=_push)

    reload = psub.add_parser(
        "reload",
        help="make a running gateway re-read its policy files now (0 in force, 1 refused: the old one stays)",
    )
    admin_client.add_options(reload)
    reload.set_defaults(func=_reload)
    status = psub.add_parser("status", help="the policy in force in a running gateway (engine, file, digest)")
    admin_client.add_options(status)
    status.set_defaults(func=_status)


def _push(args: argparse.Namespace) -> int:
    from gateway.policy.push import push

    cfg = _config(args)
    if cfg is None:
        print(
            "symbi policy push: --config (or $SYMBI_CONFIG_PATH) is required: it names the OPA server",
            file=sys.stderr,
        )
        return EXIT_USAGE
    done = push(cfg, policy=args.policy, data=args.data)
    print(
        f"pushed {', '.join(done.policies)} and data {', '.join(done.data_keys) or '(none)'} to {cfg.policy.url}"
    )
    if not done.decision_defined:
        print(
            f"symbi policy push: {cfg.policy.decision} is undefined on the server (every call would be denied)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    doc = admin_client.request(args, "POST", "/policy/reload", answers=(422,))
    if doc.get("reloaded") is True:
        return admin_client.show(
            args, doc, f"policy in force: {doc.get('policy')} (digest {doc.get('digest')})"
        )
    admin_client.show(
        args,
        doc,
        f"reload refused; the previous policy (digest {doc.get('digest')}) stays in force. "
        "`symbi policy check` shows the error (file:line); the audit log has it as policy.reload_refused",
    )
    return EXIT_FAIL


def _status(args: argparse.Namespace) -> int:
    doc = admin_client.request(args, "GET", "/policy/status")
    text = f"{doc.get('engine')}: {'loaded' if doc.get('loaded') else 'NOT LOADED (every call is denied)'}"
    if doc.get("digest"):
        text += f", {doc.get('policy')} (digest {doc['digest']})"
    admin_client.show(args, doc, text)
    return EXIT_OK if doc.get("loaded") else EXIT_FAIL


def _config(args: argparse.Namespace) -> Config | None:
    from gateway.config import load_config
    from gateway.config.load import config_path_from_env

    path = args.config or config_path_from_env(args.environ)
    return load_config(path, args.environ) if path else None


def _files(args: argparse.Namespace, cfg: Config | None) -> PolicyFiles:
    from gateway.policy.loader import discover_files

    policy = args.policy or (cfg.policy.path if cfg else None)
    data = args.data or (cfg.policy.data if cfg and not args.policy else None)
    return discover_files(policy, data)


def _decision_path(cfg: Config | None) -> str:
    return cfg.policy.decision if cfg else "data.symbi.decision"


def _check(args: argparse.Namespace) -> int:
    from gateway.policy.loader import load_checked, read_test_modules, run_tests

    cfg = _config(args)
    files = _files(args, cfg)
    try:
        bundle = load_checked(files, _decision_path(cfg))
        n = len(run_tests(bundle, read_test_modules(files.tests)))
    except PolicyLoadError as e:
        print(f"symbi: policy refused: {e.message}", file=sys.stderr)
        return EXIT_FAIL
    print(f"{files.policy}: OK (data {files.data or 'none'}; {n} policy test(s) passed)")
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from gateway.policy.cases import decision_dict
    from gateway.policy.engine import EmbeddedEngine
    from gateway.policy.remote import remote_engine

    cfg = _config(args)
    try:
        raw = sys.stdin.read() if str(args.input) == "-" else args.input.read_text(encoding="utf-8")
        doc = json.loads(raw)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--input {args.input}: cannot read a JSON document: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--input {args.input}: the input document must be a JSON object")
    doc = doc.get("input", doc) if set(doc) == {"input"} else doc  # accept OPA's {"input": ...} too
    engine: PolicyEngine
    if cfg is not None and cfg.policy.engine == "opa" and args.policy is None:
        engine = remote_engine(cfg.policy)
    else:
        emb = EmbeddedEngine(_files(args, cfg), decision=_decision_path(cfg))
        emb.load()  # a broken policy still answers: deny, with the reason
        engine = emb
    try:
        decision = engine.decide(doc)
    finally:
        engine.close()
    print(json.dumps(decision_dict(decision), indent=2, ensure_ascii=False))
    return EXIT_OK if decision.allow else EXIT_FAIL


def _test(args: argparse.Namespace) -> int:
    from gateway.policy.cases import load_cases, run_cases
    from gateway.policy.engine import EmbeddedEngine
    from gateway.policy.loader import read_bundle, read_test_modules, run_tests

    cfg = _config(args)
    files = _files(args, cfg)
    failures = 0
    try:
        bundle = read_bundle(files)
        outcomes = run_tests(bundle, read_test_modules(files.tests))
    except PolicyLoadError as e:
        print(f"symbi: policy refused: {e.message}", file=sys.stderr)
        return EXIT_FAIL
    for o in outcomes:
        if not o.passed:
            failures += 1
            print(f"FAIL {o.name} ({o.location}): {o.error}")
        elif args.verbose:
            print(f"PASS {o.name}")
    print(f"rego tests: {len(outcomes) - failures}/{len(outcomes)} passed")

    cases_path = args.cases or (files.policy.parent / "policies" / "cases.json")
    if args.cases is not None or cases_path.is_file():
        try:
            cases = load_cases(cases_path)
        except PolicyLoadError as e:
            print(f"symbi: {e.message}", file=sys.stderr)
            return EXIT_FAIL
        engine = EmbeddedEngine(files, decision=_decision_path(cfg))
        if not engine.load():
            print("symbi: the policy does not load; every case would be a deny", file=sys.stderr)
            return EXIT_FAIL
        results = run_cases(engine.decide, cases)
        bad = [r for r in results if not r.passed]
        for r in results:
            if not r.passed:
                print(
                    f"FAIL case {r.case.name!r}\n  expected {json.dumps(r.case.expected)}\n  actual   {json.dumps(r.actual)}"
                )
            elif args.verbose:
                print(f"PASS case {r.case.name!r}")
        print(f"cases: {len(results) - len(bad)}/{len(results)} passed ({cases_path})")
        failures += len(bad)
    return EXIT_OK if failures == 0 else EXIT_FAIL
