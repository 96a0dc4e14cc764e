"""The shared Docker client, and removal of sandbox containers that holds on a loaded host.

A removal is retried while Docker's refusal is transient (another removal of the same
container in progress, a 5xx while the daemon kills it, a dropped or timed-out connection)
and counts as done once Docker answers 404; any other error is a real failure, logged with
the container id (the next start's orphan sweep removes it). runsc state that Docker lost
(a failed start leaks it) is deleted with runsc itself.

Every container gets a unique name at its create, so a create whose answer was lost (the
client timed out, the daemon went on) is found and removed by that name at once. A Docker
failure during a call becomes the gateway's SandboxError family (``docker_errors``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.errors import GatewayError, SandboxError, SandboxInterrupted, SandboxUnavailable

log = logging.getLogger("symbi.sandbox")

RUNSC_STATE_ROOT = "/var/run/docker/runtime-runc/moby"  # where dockerd's runsc keeps state
# dockerd's runsc runtime must be this wrapper (scripts/symbi-runsc, installed by
# setup-sandbox.sh): it runs runsc in a network namespace of its own, so the sandboxes'
# control sockets, which answer any uid, are out of the host's namespace
RUNSC_WRAPPER = "/usr/local/libexec/symbi-runsc"
CONTAINERD_SOCK = "/var/run/docker/containerd/containerd.sock"
REMOVE_DEADLINE_S = 120.0  # a runsc kill on a loaded host takes seconds, not minutes
# how long a create the client gave up on is looked for (the daemon may still be making it)
RECLAIM_DEADLINE_S = 15.0
EVENTS_WAIT_S = 5.0  # the most a run's post-mortem waits for Docker's events
_client_lock = threading.Lock()
_client: Any = None


def docker_client() -> Any:
    """One shared Docker SDK client (thread-safe for our use); SandboxUnavailable if no daemon."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                import docker  # type: ignore[import-untyped,unused-ignore]

                c = docker.from_env(timeout=30)
                # requests reads proxy settings from os.environ on every call, iterating it: a
                # thread that sets or unsets a variable meanwhile (pytest does, per test phase)
                # makes that call raise KeyError. The daemon is local: no proxy applies.
                c.api.trust_env = False
                c.ping()
            except Exception as e:
                raise SandboxUnavailable(f"Docker daemon not reachable: {e}") from e
            _client = c
        return _client


def _transient(e: Exception) -> bool:
    """A refusal worth retrying: 409 (a removal in progress), 5xx, or a connection error."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    if isinstance(e, docker.errors.APIError):
        code = e.status_code
        return code == 409 or (code is not None and code >= 500)
    return isinstance(e, OSError)  # requests' ConnectionError and Timeout are OSErrors


def backoff() -> Iterator[float]:
    """The pauses between retries: 0.1 s, doubling, at most 5 s each."""
    delay = 0.1
    while True:
        yield delay
        delay = min(delay * 2, 5.0)


def remove_container(cid: str, *, client: Any = None, deadline_s: float = REMOVE_DEADLINE_S) -> bool:
    """Force-remove ``cid`` (an id or a name): True once Docker no longer has it; never raises."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    end, delays = time.monotonic() + deadline_s, backoff()
    while True:
        delay = next(delays)
        try:
            (client or docker_client()).api.remove_container(cid, force=True)
            return True
        except docker.errors.NotFound:
            return True  # already gone (or another removal just finished it)
        except Exception as e:  # noqa: BLE001 - classified below; a clean-up must not raise
            if not _transient(e) or time.monotonic() + delay > end:
                log.warning("cannot remove sandbox container %s: %s", cid[:12], e)
                return False
            log.debug("removal of sandbox container %s refused (%s); retrying", cid[:12], e)
        time.sleep(delay)


def container_name() -> str:
    """A unique name for a container about to be created (found by it if the answer is lost)."""
    return f"symbi-sandbox-{os.getpid()}-{uuid.uuid4().hex}"


def answer_lost(e: Exception) -> bool:
    """Whether a failed create may still have made its container: Docker did not answer
    (a timeout, a dropped connection) or answered 5xx; a 4xx is a refusal, nothing was made."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    if isinstance(e, docker.errors.APIError):
        return e.status_code is None or e.status_code >= 500
    return isinstance(e, OSError)


def reclaim(name: str, *, deadline_s: float = RECLAIM_DEADLINE_S) -> bool:
    """After a create whose answer was lost: remove the container ``name`` if the daemon made
    it, looking until ``deadline_s`` (it may still be making it). True if one was removed;
    never raises (a container it cannot remove is logged; the orphan sweep is the backstop)."""
    end, delays = time.monotonic() + deadline_s, backoff()
    while True:
        delay = next(delays)
        try:
            cid = str(docker_client().api.inspect_container(name)["Id"])
        except Exception as e:  # noqa: BLE001 - a 404 (not made, or not yet) or cannot tell: look again
            log.debug("no sandbox container %s (yet): %s", name, e)
        else:
            return remove_container(cid)  # logs a failure itself, with the id
        if time.monotonic() + delay > end:
            log.warning(
                "sandbox container %s, whose create got no answer, may appear later: the sweep removes it",
                name,
            )
            return False
        time.sleep(delay)


class Reclaims:
    """The reclaims of a tier's lost creates, run off the failing call's path (the call fails at
    once with its error) and awaited at ``close``, bounded: a container the daemon makes later
    still carries its owner's label, so the next start's orphan sweep removes it."""

    def __init__(self, deadline_s: float = RECLAIM_DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, name: str) -> None:
        """Look for and remove the container ``name`` in the background."""
        t = threading.Thread(
            target=reclaim,
            args=(name,),
            kwargs={"deadline_s": self.deadline_s},
            name="sandbox-reclaim",
            daemon=True,
        )
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def pending(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def close(self, timeout_s: float | None = None) -> bool:
        """Wait for the reclaims started so far (default: their own bound, the look's deadline
        and a removal's); True if all ended, else logged and left to the orphan sweep."""
        with self._lock:
            threads = list(self._threads)
        end = time.monotonic() + (self.deadline_s + REMOVE_DEADLINE_S if timeout_s is None else timeout_s)
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        left = sum(t.is_alive() for t in threads)
        if left:
            log.warning(
                "closing with %d sandbox container reclaim(s) still running: the sweep removes theirs", left
            )
        return not left


def sandbox_failure(what: str, e: Exception) -> SandboxError:
    """A Docker failure during ``what`` as the gateway's error: a container removed under the
    call is SandboxInterrupted, anything else (an API error, a lost connection) SandboxError."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    if isinstance(e, docker.errors.NotFound):
        return SandboxInterrupted(f"{what}: its container was removed while the call ran (no result)")
    return SandboxError(f"{what}: Docker failed ({e})")


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Raise a Docker SDK or connection failure inside as the gateway's SandboxError family."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    try:
        yield
    except GatewayError:
        raise
    except (docker.errors.DockerException, OSError) as e:
        raise sandbox_failure(what, e) from e


def runsc_refusal(runtimes: dict[str, Any], wrapper: str = RUNSC_WRAPPER) -> str | None:
    """Why dockerd's ``runsc`` runtime (``docker info``'s ``Runtimes``) cannot be used, or None.
    Registered as the bare binary, its sandboxes' control sockets would be in the host's
    network namespace, where any local process may exec into, signal or destroy them; the
    wrapper dockerd runs as root must be root's and writable by no one else."""
    fix = "(run scripts/setup-sandbox.sh)"
    runtime = runtimes.get("runsc") or {}
    if runtime.get("path") != wrapper:
        return (
            f"Docker's runsc runtime is {runtime.get('path')!r}, not {wrapper}: its sandboxes' "
            f"control sockets would answer any process of the host's network namespace {fix}"
        )
    if "--network=none" not in (runtime.get("runtimeArgs") or []):
        return f"Docker's runsc runtime runs without --network=none {fix}"
    try:
        st = os.stat(wrapper)
    except OSError as e:
        return f"{wrapper}: {e.strerror} {fix}"
    if st.st_uid != 0 or st.st_mode & 0o022:
        return f"{wrapper} is not root's alone (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}) {fix}"
    return None


def _runsc() -> str:
    """The wrapper where installed (a live sandbox's socket is reached only through it)."""
    return RUNSC_WRAPPER if os.path.exists(RUNSC_WRAPPER) else "runsc"


def runsc_ids() -> list[str]:
    if shutil.which("runsc") is None or not os.path.exists(RUNSC_STATE_ROOT):
        return []
    r = subprocess.run(
        [_runsc(), f"--root={RUNSC_STATE_ROOT}", "list", "-quiet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def docker_knows(cid: str, *, client: Any = None) -> bool:
    """False only when Docker answers 404: its runsc state is then an orphan to delete."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]

    try:
        (client or docker_client()).api.inspect_container(cid)
        return True
    except docker.errors.NotFound:
        return False
    except Exception:  # noqa: BLE001 - no daemon, a timeout, ...: cannot tell, so leave it
        return True


def runsc_delete(cid: str) -> None:
    """Force-delete runsc state of a container Docker no longer tracks (failed starts leak)."""
    try:  # cheap check first: runsc keeps one state file per container, named by id
        if not any(cid in n for n in os.listdir(RUNSC_STATE_ROOT)):
            return
    except OSError:
        return
    if cid in runsc_ids() and not docker_knows(cid):
        subprocess.run(
            [_runsc(), f"--root={RUNSC_STATE_ROOT}", "delete", "--force", cid],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if shutil.which("ctr"):
            for sub in (["tasks", "delete", "--force", cid], ["containers", "delete", cid]):
                subprocess.run(
                    ["ctr", "--address", CONTAINERD_SOCK, "-n", "moby", *sub],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )


def runsc_orphans() -> list[str]:
    gone = [i for i in runsc_ids() if not docker_knows(i)]
    for cid in gone:
        runsc_delete(cid)
    return gone


class _EventsRead:
    """What one events query has read so far, shared with the thread that reads it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actions: dict[str, dict[str, str]] = {}
        self.gave_up = False  # the caller stopped waiting: read no further
        self.refused: str | None = None  # the daemon answered the query with an error status


def _read_events(api: Any, cid: str, read: _EventsRead, wait_s: float) -> None:
    """Container ``cid``'s events (``_events_get``: bounded by ``wait_s``, so this thread
    ends too) into ``read``."""
    params = {
        "since": "0",  # the whole ring, filtered to this container's id (ids are never reused)
        # read up to its ``die`` (any ``kill`` of the run comes before it); no ``until``: on the
        # daemon's clock, one of ours filtered a ``die`` out whenever the daemon's was ahead by
        # more than it, and a ring that lost the ``die`` ends at the bound all the same
        # (``oom``: the kernel's kill at the memory limit, read by ``container_end``)
        "filters": json.dumps({"container": [cid], "event": ["kill", "oom", "die"]}),
    }
    try:
        with _events_get(api, params, wait_s) as answer:
            if (refused := _refusal(answer)) is not None:  # (no run is ever read)
                with read.lock:
                    read.refused = refused
                return
            for line in answer.iter_lines(chunk_size=None):  # each event as it comes
                event: dict[str, Any] = json.loads(line) if line else {}
                with read.lock:
                    if event:
                        attrs = (event.get("Actor") or {}).get("Attributes") or {}
                        read.actions.setdefault(str(event.get("Action")), attrs)
                    if read.gave_up or "die" in read.actions:
                        return
    except Exception as e:  # noqa: BLE001 - whatever cut it short, no ``die`` read: cannot tell
        log.warning("docker events for %s could not be read: %r", cid, e)


def _events_get(api: Any, params: dict[str, str], wait_s: float) -> Any:
    """The events query, sent as a plain GET (docker-py's ``events`` sends it with no timeout):
    connect and every read bounded by ``wait_s``; the streamed answer, to close."""
    url = f"{api.base_url}/v{api.api_version}/events"
    return api.get(url, params=params, stream=True, timeout=wait_s)


def _refusal(answer: Any) -> str | None:
    """Why the daemon (or a socket proxy in front of it) refused the events query, or None."""
    if answer.status_code == 200:
        return None
    said = answer.raw.read(200, decode_content=True)  # (bounded: not a proxy's whole page)
    return f"Docker answered {answer.status_code} to its events query: {said!r}"


def events_refusal(api: Any) -> str | None:
    """Why the events query is refused (a socket proxy forbidding ``/events``), or None: asked
    at probe time, an empty window long past (answers at once, whatever the clocks), so a tier
    whose every post-mortem would say "cannot tell" is refused up front (fail closed)."""
    with _events_get(api, {"since": "0", "until": "1"}, EVENTS_WAIT_S) as answer:
        refused = _refusal(answer)
    return None if refused is None else f"{refused}: a run's end cannot be told"


def _end_events(api: Any, cid: str) -> dict[str, dict[str, str]]:
    """The ``kill``/``oom``/``die`` events of container ``cid`` (see ``container_end``), read in
    a thread of its own waited for at most EVENTS_WAIT_S in all, whatever stalls (connect,
    headers, a body dribbling or streaming live events: a ring that lost the ``die``); what it
    has not read by then is no ``die`` (fail closed)."""
    wait_s, read = EVENTS_WAIT_S, _EventsRead()
    reader = threading.Thread(
        target=_read_events, args=(api, cid, read, wait_s), name="symbi-docker-events", daemon=True
    )
    reader.start()
    reader.join(wait_s)
    with read.lock:
        read.gave_up = True
        actions, refused = dict(read.actions), read.refused
    if refused is not None:  # no result either way, but the reason is the daemon's, not a kill
        raise SandboxUnavailable(f"a run's end cannot be told apart from another party's kill: {refused}")
    return actions


def container_end(api: Any, cid: str, exit_code: int | None) -> tuple[bool, str | None]:
    """How container ``cid`` (a name or an id; we did not stop it) ended, from Docker's events:
    (the kernel's OOM kill at its memory limit, how another party ended it, or None). THE rule
    for both the docker code tier's post-mortem and the hosted runtime's ``--rm`` containers
    (whose inspect, OOMKilled, is gone with them).

    A ``kill`` event (``docker kill``, ``docker stop``, a forced removal whose delete then
    failed) is an API kill, never the kernel's OOM kill. Docker logs the ``die`` event before
    a wait can answer, so a ``die`` missing from its record (a ring of the last 256 events,
    overrun) means it cannot tell: that is no result either (fail closed). (On Docker 23+ a
    wait answers before ``die`` is logged: the caller's inspect, which waits for the exit's
    handling, must come first.) An ``oom`` event, or a SIGKILL (137) with its ``die`` read and
    no ``kill``, is the memory limit's: runsc reports the sandbox OOM kill only as 137, and
    Docker 20.10 sets OOMKilled (and logs ``oom``) only when containerd saw the OOM before the
    exit. A daemon answering the query with an error status raises ``SandboxUnavailable``
    naming it (no result either, but not for a kill)."""
    actions = _end_events(api, cid)
    other = _killed(actions)
    return "oom" in actions or (other is None and exit_code == 137), other


def _killed(actions: dict[str, dict[str, str]]) -> str | None:
    if "kill" in actions:
        return f"was killed by another party (signal {actions['kill'].get('signal', '?')})"
    if "die" not in actions:
        # its event ring overran, or the daemon did not answer within the bound
        return "ended and Docker's events do not say how, so it may have been killed"
    return None
