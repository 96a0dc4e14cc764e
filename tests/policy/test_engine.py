"""The embedded engine fails closed: missing / empty / broken policy, undefined or malformed
decision, runtime errors, engine panics, inputs it cannot take, and it is safe across threads."""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.cases import load_cases
from gateway.policy.engine import EmbeddedEngine, evaluate
from gateway.policy.loader import PolicyBundle, PolicyFiles, discover_files, new_engine
from tests.conftest import RecordingSink
from tests.policy.conftest import CASES, POLICY

PKG = "package symbi\nimport rego.v1\n"


def engine_for(tmp_path: Path, src: str, name: str = "p.rego") -> EmbeddedEngine:
    (tmp_path / name).write_text(src)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / name))
    eng.load()
    return eng


def test_missing_policy_denies_everything_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "nope.rego"))
    with caplog.at_level(logging.WARNING, logger="symbi.policy"):
        assert eng.load() is False
    assert any(r.levelno == logging.WARNING and r.name == "symbi.policy" for r in caplog.records)
    d = eng.decide({"principal": {"id": "admin"}})
    assert d.allow is False and d.reasons


def test_empty_policy_denies_everything_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="symbi.policy"):
        eng = engine_for(tmp_path, "  \n")
    assert eng.bundle is None
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert eng.decide({}).allow is False


def test_policy_that_does_not_parse_denies_everything(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, PKG + 'decision := {"allow": true\n')
    assert eng.bundle is None
    assert eng.decide({}).allow is False


def test_allow_all_policy_allows(tmp_path: Path) -> None:
    # control for the tests below: the same machinery does allow when the policy says so
    eng = engine_for(tmp_path, PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n')
    assert eng.decide({}).allow is True


def test_undefined_decision_denies(tmp_path: Path) -> None:
    eng = engine_for(
        tmp_path, PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}} if input.magic\n'
    )
    assert eng.bundle is not None
    assert eng.decide({"magic": True}).allow is True
    d = eng.decide({})
    assert d.allow is False and d.reasons


def test_decision_rule_absent_denies(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, PKG + "allow := true\n")
    assert eng.decide({}).allow is False


@pytest.mark.parametrize(
    "body",
    [
        'decision := "allow"',
        'decision := {"allow": "true", "reasons": [], "conditions": {}}',
        'decision := {"allow": true, "reasons": [], "conditions": {"sandbox": "gvisor"}}',
        'decision := {"allow": true, "reasons": [], "conditions": {"rate_limit": "10/min"}}',
    ],
)
def test_malformed_decision_denies(tmp_path: Path, body: str) -> None:
    eng = engine_for(tmp_path, PKG + body + "\n")
    d = eng.decide({})
    assert d.allow is False and d.reasons


def test_runtime_error_in_a_branch_denies(tmp_path: Path) -> None:
    # builtin errors happen at decision time (the canary at load does not reach these bodies)
    src = PKG + (
        'default decision := {"allow": true, "reasons": [], "conditions": {}}\n'
        "decision := x if { input.evil; x := to_number(input.evil) }\n"
        "decision := 1 / 0 if input.zero\n"
    )
    eng = engine_for(tmp_path, src)
    assert eng.decide({}).allow is True
    assert eng.decide({"evil": "not a number"}).allow is False
    assert eng.decide({"zero": True}).allow is False
    assert eng.decide({}).allow is True  # the engine recovered


def test_engine_panic_is_caught_and_denies() -> None:
    """A regorus engine used from a thread that did not create it panics with a pyo3
    PanicException, a BaseException (not an Exception): evaluate() must still deny."""
    bundle = PolicyBundle(
        modules=(("p.rego", PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n'),)
    )
    box: dict[str, Any] = {}
    ready, done = threading.Event(), threading.Event()

    def owner() -> None:
        box["engine"] = new_engine(bundle)
        ready.set()
        done.wait(30)
        box.clear()  # drop it on its own thread: dropping elsewhere panics too

    t = threading.Thread(target=owner)
    t.start()
    ready.wait(30)
    try:
        # the attack is real: the raw call escapes `except Exception`
        escaped: BaseException | None = None
        try:
            box["engine"].set_input({})
        except BaseException as e:  # noqa: BLE001 - that is the point
            escaped = e
        assert escaped is not None and not isinstance(escaped, Exception)
        del escaped
        d = evaluate(box["engine"], "data.symbi.decision", {})
        assert d.allow is False and d.reasons
    finally:
        done.set()
        t.join()


def test_input_the_engine_cannot_take_denies(repo_engine: EmbeddedEngine) -> None:
    d = repo_engine.decide({"principal": {"id": "admin", "roles": ["admin"]}, "arguments": {"x": object()}})
    assert d.allow is False and d.reasons


def test_one_engine_per_thread_gives_correct_decisions(repo_engine: EmbeddedEngine, cases: list[Any]) -> None:
    expected = [(c.input, c.expected["allow"]) for c in cases]
    errors: list[str] = []

    def worker() -> None:
        for _ in range(3):
            for inp, allow in expected:
                if repo_engine.decide(inp).allow != allow:
                    errors.append(inp["target"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_repo_policy_is_the_default() -> None:
    from gateway.policy.loader import discover_files

    files = discover_files()
    assert files.policy == POLICY and files.data is not None and files.tests


def test_build_engine_from_config(tmp_path: Path) -> None:
    from gateway.config.model import Config
    from gateway.config.sections import PolicySection
    from gateway.policy.engine import build_engine
    from gateway.policy.remote import RemoteEngine
    from tests.policy.conftest import DATA

    emb = build_engine(Config(policy=PolicySection(path=POLICY, data=DATA, hot_reload=False)))
    try:
        assert isinstance(emb, EmbeddedEngine) and emb.bundle is not None
    finally:
        emb.close()
    missing = build_engine(Config(policy=PolicySection(path=tmp_path / "gone.rego", hot_reload=False)))
    assert missing.decide({"principal": {"id": "admin", "roles": ["admin"]}}).allow is False
    remote = build_engine(Config(policy=PolicySection(engine="opa", url="http://127.0.0.1:9", timeout_s=0.5)))
    assert isinstance(remote, RemoteEngine) and remote.timeout_s == 0.5
    remote.close()


def test_every_deny_carries_a_readable_reason_naming_the_cause(tmp_path: Path) -> None:
    """Missing, unusable and failing policies: the reason is text a person can act on."""
    missing = EmbeddedEngine(PolicyFiles(policy=tmp_path / "nope.rego"))
    missing.load()
    broken = engine_for(tmp_path, PKG + 'decision := {"allow": true\n')
    never_loaded = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    (tmp_path / "ok").mkdir()
    ok = engine_for(tmp_path / "ok", PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n')
    failing = ok.decide({"arguments": {"x": object()}})
    for eng, d, where in (
        (missing, missing.decide({}), "nope.rego"),
        (broken, broken.decide({}), "p.rego"),
        (never_loaded, never_loaded.decide({}), None),
        (ok, failing, None),
    ):
        assert d.allow is False and d.reasons and all(isinstance(r, str) and r for r in d.reasons), eng
        if where is not None:
            assert where in d.reasons[0]
    assert failing.reasons[0].startswith("policy evaluation failed")
    assert ok.decide({}).allow is True  # and the next decision is made by a working engine


def test_evaluate_allows_on_a_healthy_engine() -> None:
    bundle = PolicyBundle(
        modules=(
            ("p.rego", PKG + 'decision := {"allow": input.ok == true, "reasons": [], "conditions": {}}\n'),
        )
    )
    eng = new_engine(bundle)
    assert evaluate(eng, "data.symbi.decision", {"ok": True}).allow is True
    assert evaluate(eng, "data.symbi.decision", {"ok": False}).allow is False


def test_build_engine_uses_the_configured_files_decision_path_and_event_sink(tmp_path: Path) -> None:
    from gateway.config.model import Config
    from gateway.config.sections import PolicySection
    from gateway.policy.engine import build_engine

    pol, data = tmp_path / "mine.rego", tmp_path / "d.json"
    pol.write_text(
        'package mine\nimport rego.v1\nverdict := {"allow": data.flag, "reasons": [], "conditions": {}}\n'
    )
    data.write_text('{"flag": true}')
    sink = RecordingSink()
    eng = build_engine(
        Config(policy=PolicySection(path=pol, data=data, decision="data.mine.verdict", hot_reload=False)),
        events=sink,
    )
    try:
        assert isinstance(eng, EmbeddedEngine) and eng.files.policy == pol and eng.files.data == data
        assert eng.decision_path == "data.mine.verdict" and eng.decide({}).allow is True
        pol.write_text("package mine\nverdict := {")  # a broken edit: refused, and the sink is told
        assert eng.reload() is False and sink.types() == ["policy.reload_refused"]
        assert eng.decide({}).allow is True
    finally:
        eng.close()
        eng.close()


def test_reload_events_name_the_files_and_digest_and_an_unchanged_reload_is_quiet(tmp_path: Path) -> None:
    from gateway.config.model import Config
    from gateway.config.sections import PolicySection
    from gateway.policy.engine import build_engine

    pol, data = tmp_path / "mine.rego", tmp_path / "d.json"
    pol.write_text(
        'package mine\nimport rego.v1\nverdict := {"allow": data.flag, "reasons": [], "conditions": {}}\n'
    )
    data.write_text('{"flag": false}')
    sink = RecordingSink()
    eng = build_engine(
        Config(policy=PolicySection(path=pol, data=data, decision="data.mine.verdict", hot_reload=False)),
        events=sink,
    )
    assert isinstance(eng, EmbeddedEngine) and eng.bundle is not None
    try:
        assert eng.reload() is True and sink.events == []  # nothing changed: no event
        data.write_text('{"flag": true}')
        assert eng.reload() is True and eng.decide({}).allow is True  # the custom decision path still holds
        ((kind, details),) = sink.events
        assert kind == "policy.reloaded"
        assert (details["policy"], details["data"], details["digest"]) == (
            str(pol),
            str(data),
            eng.bundle.digest,
        )
        data.write_text('{"flag": false}')
        assert eng.reload() is True and eng.decide({}).allow is False  # a second change after the first
        pol.write_text("package mine\nverdict := {")
        assert eng.reload() is False
        kind, details = sink.events[-1]
        assert kind == "policy.reload_refused" and details["policy"] == str(pol)
        eng.start_watching(interval_s=60)
    finally:
        eng.close()
        eng.close()  # a stopped watcher is not stopped twice


def test_a_reload_without_a_data_file_names_no_data_file(tmp_path: Path) -> None:
    """The policy.reloaded event's "data" is empty, not a made-up path, when there is none."""
    from gateway.config.model import Config
    from gateway.config.sections import PolicySection
    from gateway.policy.engine import build_engine

    pol = tmp_path / "mine.rego"
    pol.write_text(
        'package mine\nimport rego.v1\nverdict := {"allow": true, "reasons": [], "conditions": {}}\n'
    )
    sink = RecordingSink()
    eng = build_engine(
        Config(policy=PolicySection(path=pol, decision="data.mine.verdict", hot_reload=False)), events=sink
    )
    assert isinstance(eng, EmbeddedEngine) and eng.files.data is None
    try:
        pol.write_text(
            'package mine\nimport rego.v1\nverdict := {"allow": false, "reasons": [], "conditions": {}}\n'
        )
        assert eng.reload() is True and eng.decide({}).allow is False
        ((kind, details),) = sink.events
        assert kind == "policy.reloaded" and details["data"] == "" and details["policy"] == str(pol)
    finally:
        eng.close()


def test_print_output_is_logged_and_not_kept_by_the_engine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng = engine_for(
        tmp_path,
        PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}} if {\n'
        '  print("seen", input.n)\n}\n',
    )
    with caplog.at_level(logging.DEBUG, logger="symbi.policy"):
        for n in range(3):
            assert eng.decide({"n": n}).allow is True
    assert [r.getMessage() for r in caplog.records if "policy print" in r.getMessage()] == [
        f"policy print: {tmp_path / 'p.rego'}:4: seen {n}" for n in range(3)
    ]
    assert eng.thread_engine().take_prints() == []  # nothing left to pile up


def test_an_engine_dropped_while_its_threads_live_drops_their_regorus_engines_on_those_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """regorus engines are unsendable: one dropped on another thread is an error (and leaks).
    An ``EmbeddedEngine`` that a gateway let go is collected on whatever thread runs the GC,
    while the threads that decided for it (a server thread, worker threads) still live."""
    import gc
    import sys

    dropped_elsewhere: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped_elsewhere.append(u.exc_value))
    eng: EmbeddedEngine | None = engine_for(
        tmp_path, PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n'
    )
    other = engine_for(
        tmp_path, PKG + 'decision := {"allow": false, "reasons": ["no"], "conditions": {}}\n', "q.rego"
    )
    go, decided, again, finished = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def worker() -> None:  # a thread that outlives the engine it decided for
        assert eng is not None
        seen.append(eng.decide({}).allow)
        decided.set()
        again.wait(10)
        seen.append(other.decide({}).allow)  # its next decision frees what the dead engine left
        finished.set()
        go.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    assert decided.wait(10)
    eng = None  # dropped (and collected) here, on the main thread, while the worker lives
    gc.collect()
    again.set()
    assert finished.wait(10)
    go.set()
    t.join(10)
    gc.collect()
    assert seen == [True, False]
    assert dropped_elsewhere == []


def test_an_input_mapping_that_is_not_a_dict_is_decided_as_its_dict(tmp_path: Path) -> None:
    from types import MappingProxyType

    eng = engine_for(
        tmp_path, PKG + 'decision := {"allow": input.x == 1, "reasons": ["r"], "conditions": {}}\n'
    )
    eng.cache_entries = 0  # every decision evaluated
    for doc in ({"x": 1}, {"x": 2}):
        assert eng.decide(MappingProxyType(doc)) == eng.decide(doc)
    assert eng.decide(MappingProxyType({"x": 1})).allow


def _answers() -> list[Any]:
    """Answers validate_decision tells apart though they are equal in Python (1, 1.0, True),
    differ only in key order, or would write the same text as another (NaN and None)."""
    import math

    allow: dict[str, Any] = {"allow": True, "reasons": []}
    out: list[Any] = [{**allow, "conditions": {"rate_limit": v}} for v in (1, 1.0, True, -1, 0, 2**63)]
    out += [{**allow, "conditions": {"priority": v}} for v in (9, 9.0, 10, False)]
    out += [{**allow, "conditions": {"max_result_bytes": v}} for v in (math.nan, None, math.inf, 5)]
    out += [{**allow, "conditions": {"zz": 1, "aa": 2}}, {**allow, "conditions": {"aa": 2, "zz": 1}}]
    out += [{"reasons": ["r"], "allow": False}, {"allow": False, "reasons": ["r"]}, {"allow": False}]
    out += [{**allow, "conditions": {"redact_arguments": ["token", "/a/b"], "sandbox_tier": "bwrap"}}]
    out += [{**allow, "conditions": {"audit": "full", "suspend_agent": " "}}, None, [], "allow"]
    out += [{**allow, "conditions": {"redact_text": ["("]}}, {**allow, "conditions": {"redact_text": ["a+"]}}]
    out += [{**allow, "conditions": {"sandbox_tier": {"bwrap"}}}, {1: True}, {**allow, "x": 2**70}]
    return out


def test_a_remembered_answer_is_validated_as_if_it_were_new() -> None:
    """``_validated`` gives validate_decision's decision for every answer, asked once, again,
    and after each of the others (so 1 is never answered as 1.0 or True, NaN never as None, one
    key order never as another), and each time a copy of its own."""
    from gateway.policy.decision import validate_decision
    from gateway.policy.engine import _validated

    answers: dict[bytes, Any] = {}
    raws = _answers()
    for raw in raws + raws[::-1] + raws:
        got = _validated(raw, answers)
        assert repr(got) == repr(validate_decision(raw, source="policy")), raw
    remembered = [orjson_text for orjson_text in answers]
    assert all(b"null" not in t for t in remembered) and len(remembered) == len(set(remembered))
    for _ in range(3):  # the first use (validated), then remembered ones: each edited by its caller
        mine = _validated({"allow": True, "reasons": [], "conditions": {"redact_arguments": ["k"]}}, answers)
        cond = mine.conditions
        assert isinstance(cond, dict) and cond == {"redact_arguments": ["k"]}
        cond["redact_arguments"].append("edited")
        cond["rate_limit"] = 1


def test_the_remembered_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.policy import engine

    monkeypatch.setattr(engine, "ANSWERS", 2)
    answers: dict[bytes, Any] = {}
    for n in range(5):
        decision = engine._validated({"allow": True, "conditions": {"rate_limit": n}}, answers)
        assert decision.conditions == {"rate_limit": n} and len(answers) <= 2


def test_an_engine_validates_each_distinct_answer_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through regorus: the same answer to different inputs is validated once; an answer that
    differs only in a type (1, true) or is new is validated, and decided, as itself."""
    from gateway.policy import engine as engine_module
    from gateway.policy.decision import validate_decision

    eng = engine_for(
        tmp_path,
        PKG
        + 'decision := {"allow": true, "reasons": [], "conditions": {"rate_limit": input.limit}}\n'
        + 'decision := {"allow": true, "reasons": [], "conditions": {}} if not input.limit\n',
    )
    eng.cache_entries = 0  # every decision evaluated
    validated: list[Any] = []
    real = validate_decision

    def counted(raw: Any, *, source: str) -> Any:
        validated.append(raw)
        return real(raw, source=source)

    monkeypatch.setattr(engine_module, "validate_decision", counted)
    for n in range(3):
        assert eng.decide({"limit": 1, "n": n}) == real({"allow": True, "conditions": {"rate_limit": 1}})
    assert len(validated) == 1
    refused = eng.decide({"limit": True})
    assert refused.allow is False and "rate_limit" in refused.reasons[0] and len(validated) == 2
    assert eng.decide({"limit": 2}).conditions == {"rate_limit": 2} and len(validated) == 3
    assert eng.decide({"limit": 1}).allow is True and len(validated) == 3


@pytest.mark.parametrize(
    ("case", "path"),
    [
        ("resource read by a developer", ("target",)),
        ("bus publish to a granted topic", ("topic",)),
        ("a developer searches a knowledge base", ("memory", "base")),
    ],
)
def test_a_nul_in_a_globbed_name_is_refused_without_failing_the_engine(
    case: str, path: tuple[str, ...]
) -> None:
    """A NUL in a name the policy globs (a resources/read of a URI a template matched, a bus
    topic, a knowledge base): regorus' glob.match failed the evaluation on it, and the engine
    was dropped and rebuilt (~17 ms on the event loop) for every such request. Refused before
    evaluating, with a reason; the engine is kept."""
    eng = EmbeddedEngine(discover_files())
    assert eng.load()
    inp = copy.deepcopy(next(c.input for c in load_cases(CASES) if c.name == case))
    assert eng.decide(inp).allow  # the case as written is allowed
    kept = eng.thread_engine()
    parent = inp
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] += "\x00x"
    refused = eng.decide(inp)
    assert not refused.allow and refused.reasons
    assert eng.thread_engine() is kept  # never failed: nothing rebuilt
