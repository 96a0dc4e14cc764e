"""Run an unsandboxed stdio upstream under its own unprivileged uid, never the gateway's.

The gateway (root here) holds the audit signing key, the API keys and the data dir; a stdio
server it starts as itself could read all of them (and ``/etc/shadow``) and re-sign a rewritten
log. So a server without a sandbox tier runs as ``security.upstream_user`` (default
``symbi-upstream``, a system user created on first use): ``setpriv`` switches real and effective
uid/gid, clears supplementary groups, drops every capability (bounding set included) and sets
no_new_privs before the server's own command runs. Its environment is rebuilt from scratch (no
gateway variables): PATH, HOME and TMPDIR (the server's own home, ``servers/NAME`` in the user's),
USER/LOGNAME, LANG, plus ``servers.X.env``. Each server runs in a Landlock domain of its own
with private scratch folders (``gateway.upstream.confine``): the servers share a uid, not a
reach into each other.

The server can read only what any unprivileged user can: the data dir is 0700 (see
``gateway.custody``). A gateway that is not root cannot switch uid: it refuses such a server
unless ``security.unsafe_upstreams_as_gateway_user = true`` (warned on every start) or the server
has a sandbox tier.
"""

from __future__ import annotations

import logging
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config.model import Config, ServerConfig
from gateway.errors import ConfigError, UpstreamUnavailable
from gateway.upstream.confine import SCOPED_ABI, landlock_abi

_logger = logging.getLogger("symbi.upstream")

DEFAULT_UPSTREAM_USER = "symbi-upstream"
_HOME_ROOT = Path("/var/lib")
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_create_lock = threading.Lock()
_CONFINE = Path(__file__).with_name("confine.py")  # run as a script: see its docstring


# oom_score_adj of every unsandboxed upstream: the most killable a process can be
OOM_FIRST = 1000


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account upstream servers run as."""

    name: str
    uid: int
    gid: int
    home: str
    max_tasks: int = 4096  # security.upstream_max_tasks
    scratch_mb: int = 64  # security.upstream_scratch_mb: each server's private /tmp, /dev/shm...
    confine: bool = True  # a Landlock domain per server (off: security.unsafe_upstreams_unconfined)

    def argv(self, name: str, command: str, args: list[str]) -> tuple[str, list[str]]:
        """``prlimit``, ``choom`` and the Landlock launcher in front of ``switch`` (each execs the
        next, so server ``name`` is the gateway's child): at most ``max_tasks`` processes and
        threads for the user, whose upstreams share them (a server forking without end stops
        there, not at the machine's limit); the kernel's first choice when memory runs out
        (``oom_score_adj`` 1000: a server that takes the memory is killed, not the gateway); and
        a domain of its own (``gateway.upstream.confine``: no reach into the other upstreams
        running as the same user, nor into their homes) with scratch folders of its own
        (``/tmp``, ``/dev/shm``...: at most ``scratch_mb`` MiB, gone with it)."""
        prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
        choom = shutil.which("choom") or "/usr/bin/choom"
        setpriv, switched = self.switch(command, args)
        confine: list[str] = []
        if self.confine:
            hidden, home = self.homes_hidden(), str(self.server_home(name))
            confine = [sys.executable, "-I", "-S", str(_CONFINE), hidden, home, str(self.scratch_mb), "--"]
        return prlimit, [
            f"--nproc={self.max_tasks}:{self.max_tasks}",
            "--",
            choom,
            "-n",
            str(OOM_FIRST),
            "--",
            *confine,
            setpriv,
            *switched,
        ]

    def homes_root(self) -> Path:
        """Where each server's own home is: ``servers/`` in the user's home, or a folder of the
        uid's own when the account has none."""
        home = Path(self.home)
        return (
            home / "servers"
            if home.is_absolute() and home.is_dir()
            else Path(f"/var/lib/symbi-upstream-uid{self.uid}")
        )

    def homes_hidden(self) -> str:
        """What the servers' domains close (but for each one's own home): the user's home, with
        the shared dotfiles and caches every server used before, or the homes' folder."""
        root = self.homes_root()
        return str(root.parent if root.name == "servers" else root)

    def server_home(self, name: str) -> Path:
        """Server ``name``'s own home (and TMPDIR beneath it): private to it (0700, its domain)."""
        return self.homes_root() / name

    def make_home(self, name: str) -> Path:
        """Create server ``name``'s home and its ``tmp`` if missing (the user's own, 0700), so
        its domain has it to open; the folder holding the homes is root's (0755: no server adds,
        removes or replaces another's home).

        As root, in folders a server writes to (its home is its own): each step is opened
        without following a symbolic link, and changed through its descriptor, so a server
        that left a link in place of its ``tmp`` (to ``/etc``) gets no chown of the target.

        Raises:
            UpstreamUnavailable: a link or something else where a folder should be.
        """
        home = self.server_home(name)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        steps = [(home.parent, 0, 0o755), (home, self.uid, 0o700), (home / "tmp", self.uid, 0o700)]
        parent = os.open(home.parent.parent, flags)
        try:
            for path, uid, mode in steps:
                try:
                    os.mkdir(path.name, mode, dir_fd=parent)
                except FileExistsError:
                    pass
                try:
                    fd = os.open(path.name, flags, dir_fd=parent)
                except OSError as e:
                    raise UpstreamUnavailable(
                        f"upstream {name!r}: {path} is not a folder ({e.strerror})"
                    ) from None
                os.close(parent)
                parent = fd
                os.fchown(fd, uid, self.gid if uid else 0)
                os.fchmod(fd, mode)
        finally:
            os.close(parent)
        return home

    def switch(self, command: str, args: list[str]) -> tuple[str, list[str]]:
        """``setpriv`` in front of the command: uid/gid switched, no caps, no_new_privs, and killed
        when the gateway dies (``--pdeathsig``: a gateway killed outright left a server that
        ignores its closed stdin running, as a user the gateway no longer watches)."""
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        if "/" not in command:  # found on the gateway's PATH, as before the switch
            command = shutil.which(command) or command
        return setpriv, [
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--pdeathsig=KILL",
            "--",
            command,
            *args,
        ]

    def env(self, name: str, server_env: Mapping[str, str]) -> dict[str, str]:
        """A clean environment: nothing of the gateway's own, HOME and TMPDIR the server's own,
        then the server's configured env."""
        home = str(self.server_home(name))
        base = {
            "PATH": _BASE_PATH,
            "HOME": home,
            "TMPDIR": f"{home}/tmp",
            "USER": self.name,
            "LOGNAME": self.name,
            "LANG": "C.UTF-8",
            "SHELL": "/bin/sh",
            "TERM": "dumb",
        }
        return {**base, **server_env}


def resolve_run_as(config: Config) -> RunAs | None:
    """The account for unsandboxed upstreams, or None when they may run as the gateway.

    Raises:
        ConfigError: the gateway is not root and the unsafe switch is off, or the configured
            user does not exist (only the default user is created on demand).
    """
    sec = config.security
    if sec.unsafe_upstreams_as_gateway_user:
        _logger.warning(
            "UNSAFE: security.unsafe_upstreams_as_gateway_user = true: unsandboxed upstream servers run "
            "as the gateway's own user and can read its keys, API keys and audit log"
        )
        return None
    for tool in ("setpriv", "prlimit", "choom"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"security.upstream_user: {tool} (util-linux) is not installed: cannot drop privileges "
                "and limit unsandboxed upstream servers"
            )
    if os.geteuid() != 0:
        raise ConfigError(
            "security.upstream_user: the gateway is not root, so it cannot start an unsandboxed stdio "
            "upstream under another uid; give the server a sandbox tier (servers.NAME.sandbox) or set "
            "security.unsafe_upstreams_as_gateway_user = true"
        )
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if hard != resource.RLIM_INFINITY and sec.upstream_max_tasks > hard:
        raise ConfigError(
            f"security.upstream_max_tasks: {sec.upstream_max_tasks} is over the gateway's own limit of "
            f"{hard} processes (ulimit -Hu): no upstream could start with it"
        )
    confine = True
    if sec.unsafe_upstreams_unconfined:
        _logger.warning(
            "UNSAFE: security.unsafe_upstreams_unconfined = true: unsandboxed upstream servers share one "
            "user with nothing between them: each can read the others' environment (their tokens), "
            "ptrace and signal them, and read and rewrite their files"
        )
        confine = False
    else:
        _check_landlock(landlock_abi())
    return replace(
        _account(sec.upstream_user),
        max_tasks=sec.upstream_max_tasks,
        scratch_mb=sec.upstream_scratch_mb,
        confine=confine,
    )


def _check_landlock(abi: int) -> None:
    """Refuse a kernel without Landlock; say what one older than ``SCOPED_ABI`` leaves open.

    Raises:
        ConfigError: no Landlock at all.
    """
    if abi < 1:
        raise ConfigError(
            "security.upstream_user: this kernel has no Landlock (Linux 5.13+, enabled), which keeps each "
            "unsandboxed upstream out of the others running as the same user (their environment, "
            "memory and files); give the servers a sandbox tier (servers.NAME.sandbox) or set "
            "security.unsafe_upstreams_unconfined = true"
        )
    if abi < SCOPED_ABI:  # warned, not refused: most distributions' kernels are older still
        _logger.warning(
            "security.upstream_user: this kernel's Landlock (ABI %d) cannot scope signals and abstract "
            "Unix sockets (ABI %d, Linux 6.12): each unsandboxed upstream can signal the others (they "
            "share a uid) and connect to any abstract socket of the host's network namespace, the "
            "control socket of every gVisor sandbox included (it serves any uid: exec, signal, "
            "destroy); give servers a sandbox tier (servers.NAME.sandbox) where that matters",
            abi,
            SCOPED_ABI,
        )


def _account(spec: str) -> RunAs:
    if spec.isdigit() or (":" in spec and all(p.isdigit() for p in spec.split(":", 1))):
        uid_s, _, gid_s = spec.partition(":")
        uid = int(uid_s)
        gid = int(gid_s) if gid_s else uid
        if uid == 0 or gid == 0:
            raise ConfigError("security.upstream_user: uid/gid 0 is the gateway's own privilege")
        return RunAs(name=f"uid{uid}", uid=uid, gid=gid, home="/nonexistent")
    try:
        pw = pwd.getpwnam(spec)
    except KeyError:
        if spec != DEFAULT_UPSTREAM_USER:
            raise ConfigError(
                f"security.upstream_user: no such user {spec!r} (create it, or use the default)"
            ) from None
        pw = _create_user(spec)
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise ConfigError(f"security.upstream_user: {spec!r} has uid/gid 0")
    if pw.pw_uid == os.geteuid():
        raise ConfigError(f"security.upstream_user: {spec!r} is the gateway's own user")
    return RunAs(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir)


def _create_user(name: str) -> pwd.struct_passwd:
    """``useradd --system`` with a private home under /var/lib and no login shell."""
    with _create_lock:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        home = _HOME_ROOT / name
        cmd = [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            str(home),
            "--create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
        if r.returncode not in (0, 9):  # 9: created meanwhile by another gateway
            raise ConfigError(f"security.upstream_user: cannot create user {name!r}: {r.stderr.strip()}")
        pw = pwd.getpwnam(name)
        os.chmod(home, 0o700)
        _logger.info("created system user %s (uid %d) for upstream servers", name, pw.pw_uid)
        return pw


def unreachable(paths: list[tuple[Path, str]], run_as: RunAs) -> Path | None:
    """The first of ``paths`` that ``run_as`` cannot use (``"x"`` execute/enter, ``"r"`` read).

    Asked of the kernel as that user (ACLs and all), in one short ``setpriv`` probe."""
    if not paths:
        return None
    script = (
        'i=0; for t in "$@"; do f=${t#?}; case $t in x*) test -x "$f";; *) test -r "$f";; esac '
        "|| { echo $i; exit 0; }; i=$((i+1)); done"
    )
    # not under the task limit: a user at its limit must not read as a missing path
    cmd, args = run_as.switch("/bin/sh", ["-c", script, "probe", *(f"{m}{p}" for p, m in paths)])
    r = subprocess.run(
        [cmd, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": _BASE_PATH},
        cwd="/",
    )
    out = r.stdout.strip()
    if r.returncode != 0:
        return paths[0][0]
    return paths[int(out)][0] if out.isdigit() and int(out) < len(paths) else None


def working_folder(
    name: str, server: ServerConfig, config_dir: Path | None, run_as: RunAs | None
) -> Path | None:
    """Where an unsandboxed server runs: its ``cwd``; else the config's folder (so relative
    arguments keep their meaning) when the upstream user may enter it; else its own home
    (made by ``RunAs.make_home`` before the start)."""
    if server.cwd is not None:
        return Path(server.cwd)
    if run_as is None or config_dir is None:
        return config_dir
    if unreachable([(config_dir, "x")], run_as) is None:
        return config_dir
    home = run_as.server_home(name)
    _logger.info("the config folder %s is private: upstream %s starts in %s", config_dir, name, home)
    return home


def check_launchable(name: str, server: ServerConfig, run_as: RunAs) -> None:
    """Refuse, with a reason, a server the unprivileged user could not even start.

    Raises:
        UpstreamUnavailable: its command (or interpreter) or cwd is out of the user's reach.
    """
    assert server.command is not None
    command = server.command if "/" in server.command else (shutil.which(server.command) or server.command)
    checks: list[tuple[Path, str]] = []
    if "/" in command:
        real = Path(command).resolve()
        checks.append((real, "x"))
        interp = _interpreter(real)
        if interp is not None:
            checks.append((Path(interp).resolve(), "x"))
    if server.cwd is not None:
        checks.append((Path(server.cwd), "x"))
    bad = unreachable(checks, run_as)
    if bad is not None:
        raise UpstreamUnavailable(
            f"upstream {name!r}: {bad} is not reachable by the unprivileged user {run_as.name} "
            f"(uid {run_as.uid}) that upstream servers run as; make it readable/executable by that "
            f"user (see README, Security), set servers.{name}.cwd, or give the server a sandbox tier"
        )


def _interpreter(path: Path) -> str | None:
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    return words[0] if words and words[0].startswith("/") else None
