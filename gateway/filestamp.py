"""Whether a file changed since it was last looked at, without reading it: the one stamp of
the policy watch (``gateway.policy.watch``), discovery's client files
(``gateway.onboard.clients.ReadWhenChanged``) and registry documents
(``gateway.onboard.registry.RegistryFolder``), and the API key file (``gateway.server.auth``)."""

from __future__ import annotations

import os

# (device, inode, size, mtime_ns, ctime_ns): a file replaced (a new inode, even of the same size
# and time), rewritten in place (size or mtime) or touched back to its old mtime (ctime) differs;
# the last only once the kernel's ctime clock has moved (without multigrain timestamps, Linux
# < 6.13, a rewrite within the tick of the last change, a few ms, keeps the stamp)
Stamp = tuple[int, int, int, int, int]


def file_stamp(path: str | os.PathLike[str]) -> Stamp | None:
    """The stamp of ``path`` (following a symlink), None when it cannot be looked at (missing,
    a folder not ours to search): the caller decides what a missing file means."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
