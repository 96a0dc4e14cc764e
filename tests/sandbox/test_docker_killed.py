"""A call whose container another party removes or kills gets no result (SandboxInterrupted),
whatever the exit code and the call's own stops say: real daemon, real containers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.errors import SandboxInterrupted, SandboxUnavailable
from gateway.sandbox import SandboxManager, SandboxRequest, docker_api, docker_tier
from gateway.sandbox.types import Limits

from .conftest import require_tier
from .test_docker_api import _own_container

pytestmark = pytest.mark.sandbox


def _other_party() -> Any:
    """A second real client of the real daemon: the operator, another gateway's sweep."""
    import docker

    other = docker.DockerClient(**docker.utils.kwargs_from_env(), version="1.41", timeout=60)
    other.api.trust_env = False
    return other.api


class _WaitSeam:
    """The real client's API but for ``wait``, split where Docker splits it, and ``kill``,
    noted. Docker writes the wait's 200 header once the wait is registered and before it blocks:
    another party's removal made then is answered on this wait (the removal's kill, 137), not
    with a 404. No sleep can time that; this seam is the one stand-in here."""

    def __init__(self, api: Any, between: Callable[[str], None]) -> None:
        self.real, self.between = api, between
        self.own_kill = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def kill(self, container: str, *args: Any, **kwargs: Any) -> Any:
        self.own_kill.set()  # the call's own stop (its time limit here)
        return self.real.kill(container, *args, **kwargs)

    def wait(self, container: str, timeout: float | None = None) -> dict[str, Any]:
        url = f"{self.real.base_url}/v{self.real.api_version}/containers/{container}/wait"
        answer = self.real.post(url, timeout=timeout, stream=True)  # back at the header
        answer.raise_for_status()
        self.between(container)
        status: dict[str, Any] = answer.json()
        assert self.own_kill.wait(60), "the call's time limit never fired"
        return status


class _SeamClient:
    def __init__(self, real: Any, api: _WaitSeam | _DeadSeam) -> None:
        self.real, self.api = real, api

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_time_limit_that_fires_while_another_party_removes_the_container_gives_no_result(
    manager: SandboxManager, tier_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full suite's flake: a removal by another party kills the container (a runsc
    teardown on a loaded host takes seconds) and the call's own time limit fires before the
    call reads why it ended. It returned a result, "timeout" with the removal's 137, for a run
    someone else ended. Whichever kill lands first, the container is gone under the call."""
    require_tier(manager, tier_name)
    real = docker_tier.docker_client()
    other = _other_party()
    seam = _WaitSeam(real.api, lambda cid: other.remove_container(cid, force=True))
    monkeypatch.setattr(docker_tier, "docker_client", lambda: _SeamClient(real, seam))
    with pytest.raises(SandboxInterrupted):
        manager.run(tier_name, SandboxRequest(command=("/bin/sleep", "600")), manager.limits(timeout_s=1.0))
    assert seam.own_kill.is_set()


def _signalled_until_done(
    manager: SandboxManager, tier_name: str, command: tuple[str, ...], signal: str
) -> list[object]:
    """Run ``command`` (it carries a unique marker) and have another party send ``signal`` to
    its container until the call ends; the call's own time limit is far off."""
    marker = f"{time.monotonic_ns()}"
    outcome: list[object] = []
    limits: Limits = manager.limits(timeout_s=120.0)

    def call() -> None:
        try:
            outcome.append(manager.run(tier_name, SandboxRequest(command=(*command, marker)), limits))
        except Exception as e:  # noqa: BLE001 - the outcome under test
            outcome.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    cid, other = _own_container(marker), _other_party()
    while caller.is_alive():
        try:
            other.kill(cid, signal=signal)
        except Exception:  # noqa: BLE001 - it has stopped: the call ends now
            break
        caller.join(0.2)
    caller.join(150)
    return outcome


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_call_whose_container_another_party_kills_is_interrupted(
    manager: SandboxManager, tier_name: str
) -> None:
    """``docker kill`` by someone else exits 137, as the memory limit's kill does: it was read
    as the memory limit's, a made-up result. Docker's events record the API kill."""
    require_tier(manager, tier_name)
    outcome = _signalled_until_done(manager, tier_name, ("/bin/sleep", "600"), "SIGKILL")
    assert [type(x) for x in outcome] == [SandboxInterrupted]


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_call_whose_program_another_party_terminates_is_interrupted(
    manager: SandboxManager, tier_name: str
) -> None:
    """``docker stop``'s SIGTERM by someone else, which the program answers with an ordinary
    exit code (3): that was returned as the program's own result."""
    require_tier(manager, tier_name)
    handler = "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); time.sleep(600)"
    outcome = _signalled_until_done(manager, tier_name, ("/usr/bin/python3", "-c", handler), "SIGTERM")
    assert [type(x) for x in outcome] == [SandboxInterrupted]


def _shifted(monkeypatch: pytest.MonkeyPatch, by_s: float) -> None:
    """This module's clock only, ``by_s`` ahead of the daemon's (a daemon's clock cannot be
    set here: ours shifted stands in for the daemon's, the other way)."""
    shifted = SimpleNamespace(time=lambda: time.time() + by_s, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(docker_api, "time", shifted)


def _post_mortem_within(api: Any, limit_s: float) -> list[str | None]:
    """``container_end``'s other party of a run that does not exist, in a thread joined for ``limit_s``:
    empty when it did not return by then (unbounded, it would hang for the test's life)."""
    said: list[str | None] = []
    reader = threading.Thread(
        target=lambda: said.append(docker_api.container_end(api, "0" * 64, 137)[1]), daemon=True
    )
    reader.start()
    reader.join(limit_s)
    return said


def test_the_events_post_mortem_is_bounded_when_the_daemons_clock_is_behind(
    manager: SandboxManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker-py sends the events query with no timeout, and a daemon whose clock is behind ours
    read an ``until`` as ahead and streamed live events until then: a run's post-mortem waited
    that long (an hour here). With no ``until`` a stream with no ``die`` (a ring that lost it)
    is live too: the bound (0.5 s) cuts it off, and what it could not read is no result."""
    require_tier(manager, "docker")
    _shifted(monkeypatch, 3600)
    monkeypatch.setattr(docker_api, "EVENTS_WAIT_S", 0.5)
    said = _post_mortem_within(docker_tier.docker_client().api, 60)
    assert len(said) == 1  # the bound ended the read, not ``until``
    assert said[0] is not None  # no ``die`` read: it cannot tell, so no result


def test_the_events_post_mortem_is_bounded_when_the_daemon_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon that accepts the events query and stalls before its headers: docker-py's
    ``events`` waits with no timeout, and the bound, set on the stream it returns, never existed.
    Here a real peer (a TCP listener that accepts and never answers) stands in for that daemon,
    reached by a real docker-py client; the post-mortem cannot tell, so no result."""
    import docker

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with suppress(OSError):  # (the listener shut at the end)
            while True:
                accepted.append(listener.accept()[0])  # and never a byte back

    threading.Thread(target=accept, daemon=True).start()
    api = docker.APIClient(
        # the client's own timeout far past the test's join (60 s): only the events bound ends it
        base_url=f"tcp://127.0.0.1:{listener.getsockname()[1]}",
        version="1.41",
        timeout=600,
    )
    api.trust_env = False
    monkeypatch.setattr(docker_api, "EVENTS_WAIT_S", 0.5)
    try:
        said = _post_mortem_within(api, 60)
        assert accepted  # the query reached the stalling peer
        assert len(said) == 1  # the bound ended the wait (the client alone waits 600 s)
        assert said[0] is not None  # it cannot tell: no result
    finally:
        api.close()
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for peer in accepted:
            peer.close()


def test_a_daemon_refusing_the_events_query_is_named_not_taken_for_a_kill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon that answers the events query with an error status (an API version it refuses,
    a 500): every failing run was read as "may have been killed by another party", its cause
    at debug level only. Still no result, but ``SandboxUnavailable`` naming the answer. A real
    HTTP peer on 127.0.0.1 stands in for that daemon, reached by a real docker-py client."""
    import http.server

    import docker

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"message": "refused here"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # (quiet)
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = docker.APIClient(base_url=f"tcp://127.0.0.1:{server.server_address[1]}", version="1.41", timeout=10)
    api.trust_env = False
    monkeypatch.setattr(docker_api, "EVENTS_WAIT_S", 5.0)
    try:
        with pytest.raises(SandboxUnavailable):
            docker_api.container_end(api, "0" * 64, 137)
    finally:
        api.close()
        server.shutdown()
        server.server_close()


def test_an_exit_of_its_own_is_read_as_such_when_the_daemons_clock_is_ahead(
    manager: SandboxManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon whose clock is ahead of ours stamps a run's ``die`` after an ``until`` of our
    now: filtered out, every payload's own non-zero exit read as "cannot tell", no result. An
    ``until`` ahead by the bound only moved the edge: a daemon further ahead than the bound did
    the same. The query has no ``until``: it is read up to its ``die``, whatever either clock."""
    require_tier(manager, "docker")
    _shifted(monkeypatch, -(docker_api.EVENTS_WAIT_S + 1))  # the daemon ahead by more than the bound
    got = manager.run("docker", SandboxRequest(command=("/bin/sleep", "not-a-number")))  # exit 1
    assert (got.exit_code, got.killed) == (1, "none")  # its own exit, a result (not interrupted)


class _DeadSeam:
    """The real client's API but for the post-mortem's inspect, which answers "dead" where
    Docker answers "exited". A real "dead" container is one whose removal's delete failed (its
    rootfs busy): it cannot be made here without leaving it stuck in the shared daemon, so this
    inspect answer is the one stand-in; the run, its container and its exit are real."""

    def __init__(self, api: Any) -> None:
        self.real = api
        self.answered_dead = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def inspect_container(self, container: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.real.inspect_container(container)
        if answer["State"].get("Status") == "exited":
            answer["State"]["Status"] = "dead"
            self.answered_dead = True
        return answer


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_call_whose_container_is_dead_gives_no_result(
    manager: SandboxManager, tier_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container Docker reports "dead" (another party's removal killed it, then its delete
    failed) ended under the call: its exit (1 here, the program's own otherwise) is no result."""
    require_tier(manager, tier_name)
    real = docker_tier.docker_client()
    seam = _DeadSeam(real.api)
    monkeypatch.setattr(docker_tier, "docker_client", lambda: _SeamClient(real, seam))
    with pytest.raises(SandboxInterrupted):
        manager.run(tier_name, SandboxRequest(command=("/bin/sleep", "not-a-number")))  # exits 1
    assert seam.answered_dead
