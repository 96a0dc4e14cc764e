"""The embedded engine's observable state: status() before and after a reload, the reload
event's source, the publish hook, the per-thread engine, the decision counters and a policy
that appears after a failed start (mutants of EmbeddedEngine.__init__/reload survived these)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.errors import PolicyLoadError
from gateway.events import Event
from gateway.policy.engine import CACHE_ENTRIES, EmbeddedEngine
from gateway.policy.loader import PolicyBundle, PolicyFiles
from tests.conftest import RecordingSink

PKG = "package symbi\nimport rego.v1\n"
ALLOW = PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n'
DENY = PKG + 'decision := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
LIST = {"action": "list"}  # a listing's decision is cached the first time (a call's the second)


def _engine(
    tmp_path: Path, src: str, name: str = "p.rego", sink: RecordingSink | None = None
) -> EmbeddedEngine:
    (tmp_path / name).write_text(src)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / name), events=sink)
    assert eng.load()
    return eng


def test_a_fresh_engine_reports_its_policy_from_the_file_and_nothing_refused(tmp_path: Path) -> None:
    eng = _engine(tmp_path, ALLOW)
    st = eng.status()
    assert st["source"] == "file" and st["loaded"] is True
    assert "refused" not in st and "version" not in st


def test_a_reload_from_the_files_is_recorded_as_from_the_file_and_handed_to_the_publisher(
    tmp_path: Path,
) -> None:
    sink = RecordingSink()
    eng = _engine(tmp_path, ALLOW, sink=sink)
    published: list[PolicyBundle] = []
    eng.on_local_load = published.append  # what gateway.state.policies publishes to the replicas
    (tmp_path / "p.rego").write_text(DENY)
    assert eng.reload() is True
    ((kind, details),) = sink.events
    assert kind == "policy.reloaded" and details["source"] == "file"
    assert eng.bundle is not None and [b.digest for b in published] == [eng.bundle.digest]
    assert eng.status()["source"] == "file" and "refused" not in eng.status()


def test_a_policy_written_after_a_failed_start_is_loaded_by_the_reload(tmp_path: Path) -> None:
    """The watcher's reload must take a policy that appears after the engine started denying
    (the reload compares against the file versions the failed load never recorded)."""
    sink = RecordingSink()
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"), events=sink)
    assert eng.load() is False and eng.decide({}).allow is False
    (tmp_path / "p.rego").write_text(ALLOW)
    assert eng.reload() is True and eng.decide({}).allow is True
    ((kind, details),) = sink.events
    assert kind == "policy.reloaded" and [(c["file"], c["previous_sha256"]) for c in details["changes"]] == [
        (str(tmp_path / "p.rego"), None)
    ]


def test_a_refused_reload_after_a_failed_start_is_reported_not_raised(tmp_path: Path) -> None:
    sink = RecordingSink()
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"), events=sink)
    assert eng.load() is False
    (tmp_path / "p.rego").write_text(PKG + "decision := {")
    assert eng.reload() is False
    assert [k for k, _ in sink.events] == ["policy.reload_refused"]


def test_the_thread_engine_is_none_before_this_threads_first_decision(tmp_path: Path) -> None:
    eng = _engine(tmp_path, ALLOW)
    assert eng.thread_engine() is None
    assert eng.decide({}).allow is True
    assert eng.thread_engine() is not None


def test_the_decision_counters_start_at_zero_and_count_each_decision(tmp_path: Path) -> None:
    eng = _engine(tmp_path, ALLOW)
    assert (eng.cache_hits, eng.cache_misses) == (0, 0)
    assert eng.decide(LIST).allow is True
    assert (eng.cache_hits, eng.cache_misses) == (0, 1)
    assert eng.decide(LIST).allow is True
    assert (eng.cache_hits, eng.cache_misses) == (1, 1)


def test_two_engines_on_one_thread_keep_their_own_engine_and_cache(tmp_path: Path) -> None:
    a = _engine(tmp_path, ALLOW, "a.rego")
    b = _engine(tmp_path, DENY, "b.rego")
    assert a.decide(LIST).allow is True and b.decide(LIST).allow is False
    ea, eb = a.thread_engine(), b.thread_engine()
    assert ea is not None and eb is not None and ea is not eb
    # deciding for b did not take a's engine or its cached decisions on this thread
    assert a.decide(LIST).allow is True and a.cache_hits == 1 and a.thread_engine() is ea
    assert b.decide(LIST).allow is False and b.cache_hits == 1 and b.thread_engine() is eb


def test_a_collected_engine_leaves_no_regorus_engine_on_the_threads_it_decided_on(tmp_path: Path) -> None:
    import gc

    from gateway.policy import engine as engine_mod

    eng: EmbeddedEngine | None = _engine(tmp_path, ALLOW, "a.rego")
    other = _engine(tmp_path, DENY, "b.rego")
    assert eng is not None and eng.decide({}).allow is True
    number = eng._number  # the key of its engine in this thread's slots
    assert number in engine_mod._thread_slots()
    eng = None
    gc.collect()
    assert other.decide({}).allow is False  # this thread's next decision drops what the dead engine left
    # the leak is only visible in the slots (a regorus engine holds no weak reference)
    assert number not in engine_mod._thread_slots() and other._number in engine_mod._thread_slots()


def test_status_names_the_engine_the_policy_file_and_the_digest_in_force(tmp_path: Path) -> None:
    """What `symbi policy status`, /readyz and the admin API show (survivors of status())."""
    eng = _engine(tmp_path, ALLOW)
    st = eng.status()
    assert eng.bundle is not None
    assert (st["engine"], st["policy"], st["digest"]) == (
        eng.name,
        str(tmp_path / "p.rego"),
        eng.bundle.digest,
    )
    assert isinstance(st["digest"], str) and st["digest"]


def test_status_after_a_failed_start_has_no_digest(tmp_path: Path) -> None:
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load() is False
    st = eng.status()
    assert st["loaded"] is False and st["digest"] is None and st["policy"] == str(tmp_path / "p.rego")


def test_status_reports_a_refused_broadcast_while_the_old_policy_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A policy another replica published that failed the checks here is shown as refused, in
    the status, in one audit event naming what was refused and why, and in the log."""
    sink = RecordingSink()
    eng = _engine(tmp_path, ALLOW, sink=sink)
    digest = eng.status()["digest"]
    err = PolicyLoadError("unsafe builtin", location="p.rego:3:1")
    with caplog.at_level(logging.ERROR, logger="symbi.policy"):
        eng.refuse_broadcast(7, "d" * 64, "replica-2", err)
    st = eng.status()
    assert st["refused"] == {"version": 7, "digest": "d" * 64, "publisher": "replica-2", "error": err.message}
    assert st["digest"] == digest and eng.decide({}).allow is True
    assert sink.events == [
        (
            Event.POLICY_RELOAD_REFUSED,
            {
                "source": "broadcast",
                "version": 7,
                "digest": "d" * 64,
                "publisher": "replica-2",
                "error": err.message,
                "location": "p.rego:3:1",
            },
        )
    ]
    (rec,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert rec.args == (7, "replica-2", err.message)
    assert rec.msg.count("%") == len(rec.args)  # the arguments land in the message


KEYED = PKG + 'decision := {"allow": input.n >= 0, "reasons": [], "conditions": {}}\n'


def _keyed(tmp_path: Path, cache_entries: int = CACHE_ENTRIES) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(KEYED)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"), cache_entries=cache_entries)
    assert eng.load()
    return eng


def test_the_cache_keeps_its_most_recent_entries_up_to_its_count(tmp_path: Path) -> None:
    eng = _keyed(tmp_path, cache_entries=3)
    for n in range(4):  # the fourth pushes the first (least recently used) out
        eng.decide({"n": n, "action": "list"})
    assert eng.cache_misses == 4
    for n in (1, 2, 3):
        eng.decide({"n": n, "action": "list"})
    assert (eng.cache_hits, eng.cache_misses) == (3, 4)  # exactly 3 kept: at the limit, not below
    eng.decide({"n": 0, "action": "list"})
    assert eng.cache_misses == 5


def test_the_cache_keeps_its_keys_within_its_character_budget(tmp_path: Path) -> None:
    eng = _keyed(tmp_path)
    eng.decide({"n": 0, "action": "list"})
    assert eng.bundle is not None and eng.bundle.reads is not None
    key = eng.bundle.reads.key({"n": 0})
    assert key is not None
    eng.cache_chars = 2 * len(key)  # room for two keys of this length, not three
    for n in (1, 2):  # 0 is pushed out by 2: three keys would exceed the budget
        eng.decide({"n": n, "action": "list"})
    hits = eng.cache_hits
    eng.decide({"n": 1, "action": "list"})
    eng.decide({"n": 2, "action": "list"})
    assert eng.cache_hits == hits + 2
    eng.decide({"n": 0, "action": "list"})
    assert eng.cache_hits == hits + 2 and eng.cache_misses == 4
    # after the evictions the count of characters kept is still exact: two keys fit again
    eng.decide({"n": 2, "action": "list"})
    assert eng.cache_hits == hits + 3
    eng.decide({"n": 3, "action": "list"})  # a third key: the least recently used (0) goes
    eng.decide({"n": 0, "action": "list"})
    assert eng.cache_hits == hits + 3 and eng.cache_misses == 6


def test_a_policy_whose_answers_change_is_evaluated_every_time(tmp_path: Path) -> None:
    """A policy calling time.now_ns has no cache key (inputkey.py): each decision is an
    evaluation, and none fails for want of one."""
    (tmp_path / "p.rego").write_text(
        PKG + 'decision := {"allow": time.now_ns() > 0, "reasons": [], "conditions": {}}\n'
    )
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load() and eng.bundle is not None and eng.bundle.reads is None
    for _ in range(3):
        assert eng.decide(LIST).allow is True
    assert (eng.cache_hits, eng.cache_misses) == (0, 3)


def test_calls_asked_once_do_not_push_the_listings_out(tmp_path: Path) -> None:
    eng = _keyed(tmp_path, cache_entries=2)
    for n in (0, 1):
        eng.decide({"n": n, "action": "list"})
    for n in range(2, 50):  # one-off calls (the hourly count moves with each); no action is a call
        eng.decide({"n": n, "action": "call"} if n % 2 else {"n": n})
    misses = eng.cache_misses
    for n in (0, 1):
        eng.decide({"n": n, "action": "list"})
    assert eng.cache_misses == misses and eng.cache_hits == 2


def test_a_call_asked_again_is_kept_from_its_second_asking(tmp_path: Path) -> None:
    eng = _keyed(tmp_path)
    for _ in range(2):
        eng.decide({"n": 7, "action": "call"})
    assert (eng.cache_hits, eng.cache_misses) == (0, 2)
    eng.decide({"n": 7, "action": "call"})
    assert (eng.cache_hits, eng.cache_misses) == (1, 2)


def test_the_calls_remembered_are_the_last_seen_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.policy.engine as engine_mod

    monkeypatch.setattr(engine_mod, "SEEN_CALLS", 2)
    eng = _keyed(tmp_path)
    for n in (1, 2, 1):  # 1 is still among the last 2 calls: its decision is kept now
        eng.decide({"n": n})
    eng.decide({"n": 1})
    assert eng.cache_hits == 1
    for n in (3, 4, 2):  # 2 was pushed out of the last 2 by 3 and 4: evaluated, not kept
        eng.decide({"n": n})
    eng.decide({"n": 2})
    assert eng.cache_hits == 1 and eng.cache_misses == 7


def test_the_default_cache_holds_two_listings_of_2000_tools() -> None:
    from gateway.policy.engine import CACHE_CHARS, CACHE_ENTRIES

    assert CACHE_ENTRIES >= 2 * 2000 * 2 and CACHE_CHARS >= CACHE_ENTRIES * 1024


COUNTED = PKG + (
    'ok if {\n  input.target == "t"\n  input.context.calls_last_hour < 3\n  input.arguments.ok == true\n}\n'
    'decision := {"allow": true, "reasons": [], "conditions": {}} if ok\n'
    'else := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
)


def test_a_call_with_new_target_and_counters_is_not_keyed_and_a_kept_call_still_flips(tmp_path: Path) -> None:
    """A policy reading a counter: a call whose target and counters are new is evaluated
    without a key (its key cannot have been asked), so a repeated call is kept from its third
    asking; a kept decision is never given to a call whose arguments, hourly count or target
    differ."""
    eng = _engine(tmp_path, COUNTED)
    call = {"action": "call", "target": "t", "arguments": {"ok": True}, "context": {"calls_last_hour": 0}}
    for _ in range(3):  # new fingerprint (no key); key made, first seen; seen again: kept
        assert eng.decide(call).allow is True
    assert (eng.cache_hits, eng.cache_misses) == (0, 3)
    assert eng.decide(call).allow is True and eng.cache_hits == 1
    assert eng.decide({**call, "arguments": {"ok": False}}).allow is False  # same fingerprint
    assert eng.decide({**call, "context": {"calls_last_hour": 3}}).allow is False  # over the cap
    assert eng.decide({**call, "target": "u"}).allow is False
    assert eng.decide({**call, "arguments": {"ok": False}}).allow is False
    assert (eng.cache_hits, eng.cache_misses) == (1, 7)


def test_callers_with_alike_counts_do_not_make_each_others_calls_keyed(tmp_path: Path) -> None:
    """Two callers taking turns with the same hourly count: each call's fingerprint is new for
    its caller (the policy reads the principal's id), so none is keyed until its caller asks it
    again, and the decisions stay each caller's own."""
    eng = _engine(tmp_path, COUNTED.replace('input.target == "t"', 'input.principal.id == "a"'))
    calls = [
        {
            "action": "call",
            "target": "t",
            "principal": {"id": who},
            "arguments": {"ok": True},
            "context": {"calls_last_hour": 0},
        }
        for who in ("a", "b")
    ]
    for _ in range(3):  # the third round's are kept (as one caller's are, alone)
        assert [eng.decide(c).allow for c in calls] == [True, False]
    assert (eng.cache_hits, eng.cache_misses) == (0, 6)
    assert [eng.decide(c).allow for c in calls] == [True, False] and eng.cache_hits == 2


def test_the_fingerprints_remembered_are_the_last_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.policy.engine as engine_mod

    monkeypatch.setattr(engine_mod, "SEEN_CALLS", 2)
    eng = _engine(tmp_path, COUNTED)
    call = {"action": "call", "target": "t", "arguments": {"ok": True}, "context": {"calls_last_hour": 0}}
    for _ in range(3):  # kept from the third asking
        eng.decide(call)
    eng.decide({**call, "target": "u"})
    eng.decide(call)  # t is among the last 2 calls' fingerprints: answered from the cache
    assert (eng.cache_hits, eng.cache_misses) == (1, 4)
    for target in ("v", "w"):  # push t's fingerprint out
        eng.decide({**call, "target": target})
    eng.decide(call)  # t is new again: evaluated without a key (its decision is still kept)
    assert (eng.cache_hits, eng.cache_misses) == (1, 7)
    eng.decide(call)
    assert eng.cache_hits == 2
