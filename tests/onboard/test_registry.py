"""The registry folder (gateway/onboard/registry.py, gateway/onboard/discovery.py): a folder
that cannot be listed this pass holds what it held, unknown, not gone; as a single
``server.json`` caught mid-edit already is (tests/onboard/test_discovery.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.onboard.conftest import discovery, write_json

# One discovery pass over a folder it may not list. Tests run as root, and root lists a 0000
# folder (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the pass runs in a child without those two
# capabilities (setpriv drops them from its bounding set), for which the mode bits hold, as
# they do for the unprivileged user a gateway runs as. The child first checks it is refused.
_PASS = """
import json, os, sys
from pathlib import Path
from gateway.events import LoggingSink
from gateway.onboard.discovery import Discovery
state, home, registry = map(Path, sys.argv[1:4])
try:
    os.listdir(registry)  # the folder, or its parent, closed
except PermissionError:
    pass
else:
    sys.exit(3)  # the folder can be listed: nothing to test
d = Discovery(state, LoggingSink(), home=home, cwd=home, environ={}, registry_dir=registry,
              configured=frozenset())
added, removed = d.poll()
print(json.dumps([[x.name for x in added], [x.name for x in removed]]))
"""


def _unprivileged_pass(state: Path, home: Path, registry: Path) -> list[list[str]]:
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root ignores mode bits, and no setpriv here to drop the capabilities that do")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    argv = [*prefix, sys.executable, "-c", _PASS, str(state), str(home), str(registry)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    if done.returncode == 3:
        pytest.skip("this process cannot drop the privilege to list a 0000 folder")
    assert done.returncode == 0, done.stderr
    result: list[list[str]] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("closed", ["registry", "parent"])
def test_a_registry_folder_that_cannot_be_listed_keeps_its_servers_status(
    tmp_path: Path, closed: str
) -> None:
    """Attack (on availability): the registry folder unreadable as a whole (its mode changed,
    a mount gone stale) listed as empty: every registry server was marked removed (an approved
    one stopped), then quarantined or approved again once the folder could be read; its parent
    closed, the pass raised. Now the servers keep their status until a pass lists the folder."""
    registry, home, state = tmp_path / "parent/registry", tmp_path / "home", tmp_path / "discovered.json"
    write_json(
        registry / "weather.json", {"name": "io.example/weather", "remotes": [{"url": "https://w.test/"}]}
    )
    write_json(registry / "notes.json", {"name": "io.example/notes", "remotes": [{"url": "https://n.test/"}]})
    d = discovery(state, home, home, registry_dir=registry)
    added, removed = d.poll()
    assert sorted(x.name for x in added) == ["notes", "weather"] and not removed
    d.approve("weather", by="p", expect=d.entries()["weather"].digest())
    shut = registry if closed == "registry" else registry.parent
    shut.chmod(0)
    try:
        assert _unprivileged_pass(state, home, registry) == [[], []]
    finally:
        shut.chmod(0o755)
    statuses = {n: e.status for n, e in d.entries().items()}
    assert statuses == {"weather": "approved", "notes": "quarantined"}
    (registry / "notes.json").unlink()  # listed again, without it: now it is gone
    added, removed = d.poll()
    assert not added and [x.name for x in removed] == ["notes"]
    assert d.entries()["weather"].status == "approved"
