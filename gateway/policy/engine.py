"""Policy engines: embedded regorus (default) and a remote OPA server (Data API,
``gateway.policy.remote``).

Both answer ``decide(input) -> Decision`` and never raise for an evaluation problem: a
missing policy, an undefined or malformed decision, an engine panic, an OPA server that does
not answer -- each is a deny with a reason a person can read.

regorus engines are bound to the thread that made them (``#[pyclass(unsendable)]``: any
use from another thread panics with a ``BaseException``, and one dropped on another thread is
an error and leaks), so ``EmbeddedEngine`` keeps one engine per thread and rebuilds it lazily
after a reload. They live in one module-level ``threading.local`` that is never collected, so
a thread's engines are only ever freed on that thread: by its next decision once their
``EmbeddedEngine`` is gone, or when the thread ends. (A ``threading.local`` per
``EmbeddedEngine`` freed every thread's engine on the thread that collected it.) regorus
holds the GIL for the 0.1-1 ms of a decision, so the async path calls it inline (back to back
while other calls are in flight: ``gateway.policy.together``).

Each thread also remembers its recent decisions, keyed on exactly the parts of the input the
policy can read (``gateway.policy.inputkey``): a repeated question (the same tool listed
again, the same call with the same counters) is answered without evaluating. Counters and
times the policy reads are in the key, so a changed counter is a new evaluation. A call's
decision is kept from the second time its question is asked (most calls are asked once: the
default policy reads the hourly count), so one-off calls do not push the listings' out; and a
call whose target and counters are new among the recent calls' is evaluated without making its
key (``InputReads.fingerprint``: the key holds them, so it cannot have been asked). Listings
whose key holds the caller's agent id (an HTTP session's is new per session) are kept in their
own store, so the sessions that ended push out only each other's (``decisioncache``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.config.model import Config
from gateway.context import Decision
from gateway.custody import FileVersion, changes, read_trusted, snapshot, writable_by_others
from gateway.errors import PolicyLoadError
from gateway.events import Event, EventSink, LoggingSink, record_acted
from gateway.policy.decision import deny, validate_decision
from gateway.policy.decisioncache import DecisionLru, per_agent
from gateway.policy.inputkey import InputReads
from gateway.policy.inputtext import refused_text
from gateway.policy.loader import (
    PolicyBundle,
    PolicyFiles,
    clean_error,
    discover_files,
    load_checked,
    new_engine,
)
from gateway.policy.watch import FileWatcher

log = logging.getLogger("symbi.policy")

# Decisions remembered per thread (least recently used first out), up to this many and this
# many characters of keys (~1 KB each for a tool call or a listed tool, at most
# inputkey.MAX_KEY_CHARS): room for the listings of several sessions of 2,000 tools (the
# agent is in the key) without one evicting the other's. Those listings keyed on an agent's id
# have their own store with the same bounds (decisioncache.py), so a thread holds at most
# twice this.
CACHE_ENTRIES = 16_384
CACHE_CHARS = 24 * 1024 * 1024
# A call's decision is kept only when the same question came among this many calls before it
# (the hashes of their keys are remembered): most calls never repeat (the default policy reads
# the hourly count, which moves with every call) and would push the listings' decisions out.
SEEN_CALLS = 4096
# Validated answers remembered per thread and policy (emptied when full): a policy gives few
# distinct answers (allow with the caller's conditions, a few denials), each validated once.
ANSWERS = 256
# A validated answer kept (its own copy) and the names of its conditions that hold lists.
Answer = tuple[Decision, tuple[str, ...]]

# Per thread: EmbeddedEngine number -> its regorus engine there (see the module docstring).
_THREAD = threading.local()
_LIVE: set[int] = set()  # numbers of the EmbeddedEngines not yet collected or closed
_NUMBERS = itertools.count()


@dataclass(slots=True)
class _Slot:
    engine: Any  # regorus.Engine, or None after a failed evaluation
    digest: str
    cache: DecisionLru = field(default_factory=DecisionLru)
    agents: DecisionLru = field(default_factory=DecisionLru)  # listings keyed on an agent's id
    seen: dict[int, None] = field(default_factory=dict)  # hashes of recent calls' keys, oldest first
    fingerprints: dict[int, None] = field(default_factory=dict)  # of recent calls, oldest first
    answers: dict[bytes, Answer] = field(default_factory=dict)  # by the answer's JSON text

    def worth_keying(self, input: Mapping[str, Any], reads: InputReads) -> bool:
        """Whether to make ``input``'s cache key: not for a call whose fingerprint (target and
        counters) is new, whose key cannot have been asked (most calls: the hourly count moves)."""
        if input.get("action", "call") != "call":
            return True
        fp = reads.fingerprint(input)
        if fp is None or fp in self.fingerprints:
            return True
        self.fingerprints[fp] = None
        if len(self.fingerprints) > SEEN_CALLS:
            del self.fingerprints[next(iter(self.fingerprints))]
        return False

    def keep(self, key: str, input: Mapping[str, Any]) -> bool:
        """Whether to cache the decision of ``input``: any but a call, and a call asked before."""
        if input.get("action", "call") != "call":
            return True
        h = hash(key)
        if h in self.seen:
            return True
        self.seen[h] = None
        if len(self.seen) > SEEN_CALLS:
            del self.seen[next(iter(self.seen))]
        return False


def _thread_slots() -> dict[int, _Slot]:
    """This thread's engines; those of collected EmbeddedEngines are dropped (on this thread)."""
    slots: dict[int, _Slot] | None = getattr(_THREAD, "slots", None)
    if slots is None:
        slots = _THREAD.slots = {}
    elif len(slots) > 1 or not slots.keys() <= _LIVE:
        for n in [n for n in slots if n not in _LIVE]:
            del slots[n]
    return slots


# Never swallowed: they are how the process and the event loop stop.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


class PolicyEngine(ABC):
    """Answers one question per request: may this principal do this, and on what conditions."""

    name: str = "policy"
    decides_inline: bool = False  # True: adecide is decide, answered on the loop (no task per input)

    @abstractmethod
    def decide(self, input: Mapping[str, Any]) -> Decision:
        """The decision for one input document. Never raises for evaluation problems."""

    async def adecide(self, input: Mapping[str, Any]) -> Decision:
        """Async form (the gateway's path); the default calls ``decide`` inline."""
        return self.decide(input)

    reloadable: bool = False  # whether ``reload`` re-reads a policy the gateway holds

    def status(self) -> dict[str, Any]:
        """For ``/readyz`` and the admin API: ``loaded`` at least."""
        return {"engine": self.name, "loaded": True}  # asked on every decision; failures deny there

    def reload(self) -> bool:
        """Re-read the policy; True when a new one is in force (only if ``reloadable``)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook: most engines hold nothing to release
        """Release threads / connections."""


def evaluate(engine: Any, decision: str, input: Mapping[str, Any]) -> Decision:
    """Evaluate ``decision`` on a regorus engine; any failure (including a panic) is a deny."""
    refused = refused_text(input)
    return refused if refused is not None else _evaluate(engine, decision, input)[0]


def _evaluate(
    engine: Any, decision: str, input: Mapping[str, Any], answers: dict[bytes, Answer] | None = None
) -> tuple[Decision, bool]:
    """(decision, engine still healthy); ``answers``: validated answers to reuse (``_validated``)."""
    try:
        engine.set_input(input)  # regorus converts any Mapping itself (tested): no copy first
        raw = engine.eval_rule(decision)
        # print() output is gathered (stdout is the stdio protocol) until taken: take it every
        # time, or a policy that prints grows the engine's memory with every decision
        for line in engine.take_prints():
            log.debug("policy print: %s", line)
    except _PASS_THROUGH:
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3 PanicException derives from BaseException
        reason = clean_error(e).strip().splitlines()
        log.error("policy evaluation failed (%s): %s", type(e).__name__, " ".join(reason))
        return deny(f"policy evaluation failed: {reason[-1] if reason else type(e).__name__}"), False
    if answers is None:
        return validate_decision(raw, source="policy"), True
    return _validated(raw, answers), True


def _validated(raw: Any, answers: dict[bytes, Answer]) -> Decision:
    """``validate_decision(raw)``, remembered by ``raw``'s JSON text (orjson's, keys in their
    order): a pure function of ``raw``, and the text tells apart whatever it tells apart (1,
    1.0 and true; key order; each float and string). Each use gets its own copy (its lists
    copied, as ``_copy`` copies them). Never remembered: what orjson cannot write (a set, a
    non-string key, a 65-bit integer), and a text with ``null`` in it (orjson writes NaN and
    the infinities as null too)."""
    try:
        text = orjson.dumps(raw)
    except TypeError:  # orjson.JSONEncodeError is one
        return validate_decision(raw, source="policy")
    hit = answers.get(text)
    if hit is not None:
        kept, lists = hit
        cond = dict(kept.conditions)
        for name in lists:
            cond[name] = cond[name][:]
        return Decision(kept.allow, kept.reasons, cond)
    decision = validate_decision(raw, source="policy")
    if b"null" not in text:
        if len(answers) >= ANSWERS:
            answers.clear()
        kept = _copy(decision)
        answers[text] = (kept, tuple(k for k, v in kept.conditions.items() if isinstance(v, list)))
    return decision


def _copy(d: Decision) -> Decision:
    """A decision no caller can edit the cache through: validated conditions hold only
    scalars and lists of strings, so copying the dict and its lists copies everything."""
    cond = {k: list(v) if isinstance(v, list) else v for k, v in d.conditions.items()}
    return Decision(d.allow, d.reasons, cond)


class EmbeddedEngine(PolicyEngine):
    """regorus in-process, one engine per thread, hot reload of policy and data files."""

    name = "embedded"
    reloadable = True
    decides_inline = True

    def __init__(
        self,
        files: PolicyFiles,
        *,
        decision: str = "data.symbi.decision",
        events: EventSink | None = None,
        cache_entries: int = CACHE_ENTRIES,
        cache_chars: int = CACHE_CHARS,
    ) -> None:
        self.files = files
        self.cache_entries = cache_entries  # 0: evaluate every decision (benchmarks compare)
        self.cache_chars = cache_chars
        self.decision_path = decision
        self._events = events or LoggingSink()
        self._bundle: PolicyBundle | None = None
        self._not_loaded = "no policy is loaded: every request is denied"
        self._number = next(_NUMBERS)
        _LIVE.add(self._number)
        weakref.finalize(self, _LIVE.discard, self._number)  # its threads drop their engines
        # a reload from the files, and a policy adopted from another replica, one at a time
        self.reload_lock = threading.RLock()
        # with replicas sharing state: called (under the lock) with each policy loaded from
        # this replica's own files, to publish it to the others (gateway.state.policies)
        self.on_local_load: Callable[[PolicyBundle], None] | None = None
        self._origin: dict[str, Any] = {"source": "file"}
        self._refused: dict[str, Any] | None = None  # the last published policy refused here
        self._watcher: FileWatcher | None = None
        self._versions: dict[Path, FileVersion] = {}
        self.cache_hits = 0  # decisions answered from the per-thread cache (see inputkey.py)
        self.cache_misses = 0

    @property
    def bundle(self) -> PolicyBundle | None:
        """The policy in force (``None``: nothing loaded, everything denied)."""
        return self._bundle

    def status(self) -> dict[str, Any]:
        bundle = self._bundle
        return {
            "engine": self.name,
            "loaded": bundle is not None,
            "policy": str(self.files.policy),
            "digest": bundle.digest if bundle is not None else None,
            **self._origin,
            **({"refused": self._refused} if self._refused is not None else {}),
        }

    def load(self) -> bool:
        """Initial load. On failure everything is denied and a warning says so; returns success."""
        try:
            versions = snapshot(self.files.watched())
            self._bundle = load_checked(self.files, self.decision_path)
            self._versions = versions
        except PolicyLoadError as e:
            self._bundle = None
            try:
                missing_or_empty = not read_trusted(self.files.policy).strip()
            except OSError:
                missing_or_empty = not self.files.policy.is_file()
            what = "missing or empty" if missing_or_empty else "not usable"
            self._not_loaded = f"policy {self.files.policy} is {what} ({e.message}): every request is denied"
            log.warning("policy %s is %s: %s -- DENYING EVERY REQUEST", self.files.policy, what, e.message)
            return False
        log.info("policy loaded from %s (data %s)", self.files.policy, self.files.data or "none")
        return True

    def reload(self) -> bool:
        """Validate the files again; swap the new policy in only if it parses and passes its tests."""
        with self.reload_lock:
            files = self.files.current()  # with the policy tests beside it now
            try:
                versions = snapshot(files.watched())
                for path in files.watched():
                    why = writable_by_others(path)
                    if why is not None:
                        raise PolicyLoadError(f"refusing to trust {path}: {why}")
                bundle = load_checked(files, self.decision_path)
            except PolicyLoadError as e:
                log.error("policy reload refused, the previous policy stays in force: %s", e.message)
                record_acted(
                    self._events,
                    Event.POLICY_RELOAD_REFUSED,
                    {
                        "policy": str(self.files.policy),
                        "error": e.message,
                        "location": e.location,
                        "changes": changes(self._versions, versions),
                    },
                )
                return False
            self.files = files
            if self._bundle is not None and bundle.digest == self._bundle.digest:
                return True
            changed = changes(self._versions, versions)
            self._versions = versions
            self._bundle = bundle  # one reference assignment: threads see old or new, never half
            self._origin, self._refused = {"source": "file"}, None
            log.info("policy reloaded from %s (digest %s)", self.files.policy, bundle.digest[:12])
            # in force already: a refused record must not keep it from the replicas nor end the
            # sync (a log refusing it is broken for good: logged, with the digest)
            record_acted(
                self._events,
                Event.POLICY_RELOADED,
                {
                    "policy": str(self.files.policy),
                    "data": str(self.files.data or ""),
                    "digest": bundle.digest,
                    "source": "file",
                    "changes": changed,  # per file: owner, sha256 before/after, lines +/-, hunks
                },
            )
            if self.on_local_load is not None:
                self.on_local_load(bundle)
            return True

    # -- policies published by other replicas (gateway.state.policies; callers hold reload_lock) --

    def adopt(self, bundle: PolicyBundle, *, version: int, publisher: str) -> None:
        """Put a verified policy another replica published in force, on the record."""
        self._bundle = bundle
        self._origin = {"source": "broadcast", "version": version, "publisher": publisher}
        self._refused = None
        log.info("policy version %d from %s in force (digest %s)", version, publisher, bundle.digest[:12])
        record_acted(
            self._events,
            Event.POLICY_RELOADED,
            {"source": "broadcast", "digest": bundle.digest, "version": version, "publisher": publisher},
        )

    def note_published(self, version: int, publisher: str) -> None:
        """The policy in force is the one published as ``version`` (by this replica or another)."""
        self._origin = {**self._origin, "version": version, "publisher": publisher}

    def refuse_broadcast(self, version: int, digest: str, publisher: str, e: PolicyLoadError) -> None:
        """A published policy failed the checks here: the policy in force keeps deciding."""
        self._refused = {"version": version, "digest": digest, "publisher": publisher, "error": e.message}
        log.error("published policy version %d from %s refused: %s", version, publisher, e.message)
        record_acted(
            self._events,
            Event.POLICY_RELOAD_REFUSED,
            {
                "source": "broadcast",
                "version": version,
                "digest": digest,
                "publisher": publisher,
                "error": e.message,
                "location": e.location,
            },
        )

    def start_watching(self, interval_s: float = 1.0) -> None:
        """Poll the policy, data and test files' mtimes; reload on change (daemon thread)."""
        if self._watcher is None:
            self._watcher = FileWatcher(
                lambda: self.files.current().watched(), self.reload, interval_s=interval_s
            )
            self._watcher.start()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def thread_engine(self) -> Any:
        """This thread's regorus engine for this policy (None before its first decision here)."""
        slot = _thread_slots().get(self._number)
        return slot.engine if slot is not None else None

    def decide(self, input: Mapping[str, Any]) -> Decision:
        bundle = self._bundle
        if bundle is None:
            return deny(self._not_loaded)
        slots = _thread_slots()
        local = slots.get(self._number)
        if local is None or local.engine is None or local.digest != bundle.digest:
            try:
                engine = new_engine(bundle)
            except PolicyLoadError as e:  # validated at load, so only a broken environment gets here
                return deny(f"policy engine cannot start: {e.message}")
            if local is not None and local.digest == bundle.digest:
                # the engine failed an evaluation: a new one, the same policy's decisions kept
                # (dropping them let any input that errors empty the cache for every caller)
                local.engine = engine
            else:  # decisions of the previous policy never outlive it
                local = slots[self._number] = _Slot(engine, bundle.digest)
        engine = local.engine
        reads = bundle.reads
        key = (
            reads.key(input)
            if reads is not None and self.cache_entries and local.worth_keying(input, reads)
            else None
        )
        # a session's listings (its agent is new) apart: their dead entries push out only
        # each other (decisioncache.py)
        cache = (
            local.agents if key is not None and reads is not None and per_agent(input, reads) else local.cache
        )
        if key is not None:
            hit = cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return _copy(hit)
        self.cache_misses += 1
        refused = refused_text(input)
        if refused is not None:  # never kept: another input with the same read parts may be fine
            return refused
        decision, healthy = _evaluate(engine, self.decision_path, input, local.answers)
        if not healthy:
            local.engine = None  # never reuse an engine that failed mid-evaluation
        elif key is not None and local.keep(key, input):  # never a failed evaluation
            cache.put(key, _copy(decision), self.cache_entries, self.cache_chars)
        return decision


def build_engine(config: Config, events: EventSink | None = None) -> PolicyEngine:
    """The engine ``config.policy`` asks for, loaded (and watching its files if hot_reload)."""
    pol = config.policy
    if pol.engine == "opa":
        from gateway.policy.remote import remote_engine  # it imports this module

        return remote_engine(pol)
    engine = EmbeddedEngine(discover_files(pol.path, pol.data), decision=pol.decision, events=events)
    engine.load()
    if pol.hot_reload:
        engine.start_watching()
    return engine
