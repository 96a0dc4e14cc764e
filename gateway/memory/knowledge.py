"""Knowledge bases: files chunked, embedded and stored; re-ingesting touches changed files only.

A base is a name; its chunks are points with ``kind = "knowledge"``, ``base``, ``source`` (the
file's resolved path), ``sha`` (of the file's bytes), ``chunk``, ``heading``, ``text`` and ``meta``
(a Markdown file's YAML front matter: what search ``filters`` match). What
is already stored is the manifest (read back from the store, so a Qdrant server shared by
several gateways needs no local state): a file whose sha is unchanged is skipped, a changed file
has its chunks replaced, and a file that disappeared from the folder has its chunks removed.
Each file's text is screened (``gateway.screen``): one whose high finding speaks to the model
is not stored (its earlier chunks go), and the report names it with the rules.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ContextError
from gateway.events import Event
from gateway.memory.access import redact_text
from gateway.memory.manager import FILTER_KEY, ContextManager, check_name
from gateway.memory.store import HELD, Point, point_id
from gateway.screen.asread import Reading, screened
from gateway.screen.screener import Finding
from gateway.textcheck import not_utf8_at

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.S)
CHUNK_CHARS = 1000  # ~250 tokens: below the model's 256-token window with the heading prefix
MAX_FILE_BYTES = 5 * 1024 * 1024
SCREENED = b"\0screened:2"  # part of each file's stored version (see ``KnowledgeBases.add``)
# the marker before the screening read through formatting (``gateway.screen.asread``): a file
# stored under it and unchanged since is kept if only that reading flags it (``IngestReport.held``)
SCREENED_WRITTEN = b"\0screened:1"
# what a listing of stored files reads of each chunk (never its text)
SOURCE_SHA = ("source", "sha")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


@dataclass(frozen=True)
class Chunk:
    index: int
    heading: str
    text: str


@dataclass
class IngestReport:
    base: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    chunks: int = 0
    redacted: int = 0  # matches of the policy's redact_text patterns replaced before embedding
    flagged: dict[str, list[str]] = field(default_factory=dict)  # source -> screening findings
    accepted: dict[str, list[str]] = field(default_factory=dict)  # source -> rules an operator accepted
    # source -> findings: stored earlier, bytes unchanged, flagged now only by the reading
    # through formatting (a heuristic that can misread code): kept as stored, screened and
    # reported again on every add until accepted (``accept_flagged``) or removed
    held: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
            "chunks": self.chunks,
            "redacted": self.redacted,
            "flagged": len(self.flagged),
            "accepted": len(self.accepted),
            "held": len(self.held),
            "seconds": round(self.seconds, 3),
        }


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """A Markdown file's YAML front matter (``---`` lines at the top) as metadata, and the text
    without it. Its scalar fields (and lists of strings) become every chunk's metadata: what
    ``knowledge__search`` ``filters`` match. A block that is not a YAML mapping stays text."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}, text
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    meta: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not FILTER_KEY.match(k):
            continue
        if isinstance(v, date):
            v = v.isoformat()
        if isinstance(v, str | int | bool) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            meta[k] = v
    return meta, text[m.end() :]


def _paragraphs(text: str) -> Iterator[tuple[str, str]]:
    """(heading, paragraph) pairs; a heading line sets the heading of what follows."""
    heading = ""
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        body: list[str] = []
        for line in lines:
            m = _HEADING.match(line.strip())
            if m:
                if body:
                    yield heading, "\n".join(body)
                    body = []
                heading = m.group(2).strip()
            else:
                body.append(line)
        if body:
            yield heading, "\n".join(body)


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[Chunk]:
    """Paragraphs packed into chunks of at most ``max_chars`` under one heading; long ones split."""
    out: list[Chunk] = []
    cur: list[str] = []
    cur_heading = ""

    def flush() -> None:
        if cur:
            out.append(Chunk(len(out), cur_heading, "\n\n".join(cur)))
            cur.clear()

    for heading, para in _paragraphs(text):
        pieces = (
            [para[i : i + max_chars] for i in range(0, len(para), max_chars)]
            if len(para) > max_chars
            else [para]
        )
        for piece in pieces:
            if heading != cur_heading or sum(len(c) + 2 for c in cur) + len(piece) > max_chars:
                flush()
                cur_heading = heading
            cur.append(piece)
    flush()
    return out


class KnowledgeBases:
    """Ingest, list and remove knowledge bases stored through a ``ContextManager``."""

    def __init__(self, manager: ContextManager) -> None:
        self.m = manager

    def _manifest(self, base: str) -> dict[str, str]:
        """source -> sha of what is stored for ``base``."""
        return {
            str(p.payload.get("source")): str(p.payload.get("sha"))
            for p in self.m.store.scroll(
                {"kind": "knowledge", "base": base}, limit=1_000_000, fields=SOURCE_SHA
            )
        }

    def _acceptances(self, base: str) -> dict[str, Any]:
        """source -> the acceptance stored with it (``{"sha256": of the file's bytes, "rules"}``)."""
        return {
            str(p.payload.get("source")): p.payload["accepted"]
            for p in self.m.store.scroll(
                {"kind": "knowledge", "base": base, "chunk": 0},
                limit=1_000_000,
                fields=("source", "accepted"),
            )
            if isinstance(p.payload.get("accepted"), dict)
        }

    def add(
        self,
        base: str,
        path: Path,
        *,
        glob: str = "**/*",
        prune: bool = True,
        progress: Callable[[int, int, str], None] | None = None,
        redact: Sequence[str] = (),
        accept_flagged: frozenset[str] = frozenset(),
    ) -> IngestReport:
        """Ingest the files under ``path`` matching ``glob``; a file path ingests that file.

        ``redact``: regular expressions (the policy's ``redact_text``) whose matches are replaced
        before anything is chunked, embedded or stored. ``accept_flagged``: screening rules an
        operator read and accepted in the one file ``path`` names (a document quoting an
        injection to teach about it); stored with its chunks for that file's exact bytes."""
        import time

        started = time.perf_counter()
        check_name(base, "base")
        root, files = _listed(path, glob)
        if accept_flagged and not root.is_file():
            # an accept is for what a person read: one file, never every file of a folder
            raise ContextError(f"{path}: --accept-flagged names rules read in one file: name the file")
        inside = root if root.is_dir() else None
        rep = IngestReport(base)
        stored = self._manifest(base)
        accepted = self._acceptances(base)
        for n, f in enumerate(files, 1):
            src = str(f)
            self._ingest(
                base,
                src,
                read_file(f, inside),
                redact,
                stored.get(src),
                accepted.get(src),
                accept_flagged,
                rep,
            )
            if progress:
                progress(n, len(files), src)
        if prune and inside is not None:
            rep.removed = self._prune(base, inside, {str(f) for f in files}, stored)
        rep.seconds = time.perf_counter() - started
        self.m.events.emit(Event.KNOWLEDGE_INGESTED, rep.as_dict())
        return rep

    def _ingest(
        self,
        base: str,
        src: str,
        data: bytes,
        redact: Sequence[str],
        stored_sha: str | None,
        kept: Any,
        accept_flagged: frozenset[str],
        rep: IngestReport,
    ) -> None:
        """One file: skipped when this version is stored, else screened, then stored or refused."""
        # the patterns and the screening are part of the version: a new redaction pattern
        # redoes every file, and so did the screening's arrival (bases from before it)
        version = data + "\0".join(redact).encode()
        sha = hashlib.sha256(version + SCREENED).hexdigest()
        if stored_sha == sha:
            rep.unchanged.append(src)
            return
        text, n_redacted = redact_text(data.decode("utf-8", errors="replace"), redact)
        written, formatted = _screened_parts(text)
        found = written + formatted
        acceptance = _acceptance(found, hashlib.sha256(data).hexdigest(), kept, accept_flagged)
        if found and acceptance is None:
            if not written and stored_sha == hashlib.sha256(version + SCREENED_WRITTEN).hexdigest():
                # stored under the screening as written, bytes unchanged, flagged now only by
                # the reading through formatting: kept as it is stored (the old version, so it is
                # screened and reported again on each add), never dropped silently; and marked,
                # so no search hands it to an agent until the operator accepts or removes it
                self.m.store.set_payload({"kind": "knowledge", "base": base, "source": src}, HELD)
                rep.held[src] = [line for _, line in found]
                return
            # what the file says now would speak to every agent it is handed to
            self.m.store.delete(filter={"kind": "knowledge", "base": base, "source": src})
            rep.flagged[src] = [line for _, line in found]
            return
        (rep.updated if stored_sha is not None else rep.added).append(src)
        if acceptance:
            rep.accepted[src] = acceptance["rules"]
        rep.redacted += n_redacted
        rep.chunks += self._put(base, src, sha, text, acceptance)

    def _prune(self, base: str, root: Path, seen: set[str], stored: dict[str, str]) -> list[str]:
        """Remove the chunks of files once ingested from under ``root`` and gone now."""
        removed = [s for s in stored if s.startswith(str(root) + "/") and s not in seen]
        for src in removed:
            self.m.store.delete(filter={"kind": "knowledge", "base": base, "source": src})
        return removed

    def _put(self, base: str, src: str, sha: str, text: str, accepted: dict[str, Any] | None = None) -> int:
        meta, text = front_matter(text)
        chunks = chunk_text(text)
        flt: dict[str, Any] = {"kind": "knowledge", "base": base, "source": src}
        self.m.store.delete(filter=flt)  # the old version's chunks (there may be more of them)
        if not chunks:
            return 0
        # the heading travels with the text into the embedding: it names what the chunk is about
        vecs = self.m.embed([f"{c.heading}\n{c.text}" if c.heading else c.text for c in chunks])
        now = self.m.clock()
        self.m.store.upsert(
            [
                Point(
                    point_id(f"kb:{base}:{src}:{c.index}"),
                    vecs[i].tolist(),
                    {
                        **flt,
                        "sha": sha,
                        "chunk": c.index,
                        "heading": c.heading,
                        "text": c.text,
                        "ts": now,
                        "meta": meta,
                        **({"accepted": accepted} if accepted else {}),
                    },
                )
                for i, c in enumerate(chunks)
            ]
        )
        return len(chunks)

    def names(self) -> list[str]:
        """The bases that have chunks (one point per file is read: each file's first chunk)."""
        return sorted(
            {
                str(p.payload.get("base"))
                for p in self.m.store.scroll(
                    {"kind": "knowledge", "chunk": 0}, limit=1_000_000, fields=("base",)
                )
            }
        )

    def list(self) -> dict[str, dict[str, int]]:
        """base -> {files, chunks}."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.m.store.scroll({"kind": "knowledge"}, limit=1_000_000, fields=("base", "source")):
            b = out.setdefault(str(p.payload.get("base")), {"files": set(), "chunks": 0})
            b["files"].add(p.payload.get("source"))
            b["chunks"] += 1
        return {k: {"files": len(v["files"]), "chunks": v["chunks"]} for k, v in sorted(out.items())}

    def remove(self, base: str, path: Path | None = None) -> int:
        """Remove a base, or only the files at/under ``path``; returns the chunks removed."""
        check_name(base, "base")
        if path is None:
            flt: dict[str, Any] = {"kind": "knowledge", "base": base}
            n = self.m.store.count(flt)
            self.m.store.delete(filter=flt)
            return n
        root = str(path.resolve())
        gone = [s for s in self._manifest(base) if s == root or s.startswith(root + "/")]
        n = 0
        for src in gone:
            flt = {"kind": "knowledge", "base": base, "source": src}
            n += self.m.store.count(flt)
            self.m.store.delete(filter=flt)
        return n


def _listed(path: Path, glob: str) -> tuple[Path, list[Path]]:
    """The resolved ``path`` and the files to ingest: itself, or those under it matching
    ``glob`` (hidden ones only when the glob names them); each refused, naming it, before the store is touched when it cannot be held
    (a name not UTF-8) or leads outside the folder."""
    root = path.resolve()
    if not root.exists():
        raise ContextError(f"{path}: no such file or folder")
    if not (root.is_file() or root.is_dir()):  # a FIFO, a device: nothing to glob, nothing to read
        raise ContextError(f"{path}: not a regular file or a folder")
    files = [root] if root.is_file() else sorted(p for p in root.glob(glob) if p.is_file())
    if root.is_dir() and not any(part.startswith(".") for part in Path(glob).parts):
        # as a shell glob: hidden files and folders only when the glob names them. The default
        # "**/*" took a repository's .git/config (its remote URL's token), .git/objects and .env
        files = [f for f in files if not any(p.startswith(".") for p in f.relative_to(root).parts)]
    _names_are_utf8(files)
    for f in files if root.is_dir() else ():
        if not f.resolve().is_relative_to(root):
            raise ContextError(f"{f}: leads to {f.resolve()}, outside {root}: not ingested")
    return root, files


def _acceptance(
    found: list[tuple[str, str]], digest: str, kept: Any, named: frozenset[str]
) -> dict[str, Any] | None:
    """The acceptance a flagged file is stored with: every rule it trips accepted, by the
    operator now (``named``) or earlier for these exact bytes (``kept``); else None (refused).
    A file that changed is screened again and needs a new accept."""
    rules = sorted({rule for rule, _ in found})
    earlier = (
        set(kept.get("rules") or []) if isinstance(kept, dict) and kept.get("sha256") == digest else set()
    )
    if not found or not set(rules) <= (named | earlier):
        return None
    return {"sha256": digest, "rules": rules}


def _screened_parts(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The high screening findings of a file's text that speak to the model (the tool
    definitions' rules: hidden instructions, concealment, shadowing), as ``(rule, "field:
    summary (rule)")``, in two parts: those of the text as written (invisible characters
    dropped, tag characters decoded), and those only the reading through formatting adds.
    None: it may be stored. The secrets and exfiltration rules are left out: documents are
    about things, and a runbook naming ``~/.ssh`` or ``curl``, or a security policy saying
    "forward a message asking for your password to the desk" (tests/memory/corpus), is what a
    knowledge base is for."""
    r = screened([("text", text)], decoded=True)

    def lines(found: tuple[Finding, ...]) -> list[tuple[str, str]]:
        return list(zip((f.rule for f in found), Reading.reasons(found), strict=True))

    return lines(r.written), lines(r.added)


def read_file(path: Path, inside: Path | None) -> bytes:
    """A file's bytes, at most ``MAX_FILE_BYTES``; under a folder (``inside``) only a regular
    file that really is in it. A symlink someone left in a docs folder led anywhere: to
    ``/proc/self/environ`` (the CLI's API keys), the gateway's key files, another user's notes,
    all then served to agents as knowledge. Checked on the open file (no swap between check
    and read); bounded while reading (a 10 GB file was read whole before its size was looked at).

    Raises:
        ContextError: naming the file; nothing of it is read further.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    except OSError as e:
        raise ContextError(f"{path}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ContextError(f"{path}: not a regular file")
        if inside is not None:
            real = Path(os.path.realpath(f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else path))
            if not real.is_relative_to(inside):
                raise ContextError(
                    f"{path}: leads to {real}, outside {inside}: not ingested (name a file outside "
                    "the folder on its own to ingest it)"
                )
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ContextError(f"{path}: more than {MAX_FILE_BYTES} bytes (split it)")
    return data


def _names_are_utf8(files: Sequence[Path]) -> None:
    """File names are decoded with ``surrogateescape``: one that is not UTF-8 would become a
    source no store, filter or record can hold (gateway/textcheck.py). Refused before the
    store is touched, naming the file (its bad bytes as escapes)."""
    bad = not_utf8_at([str(f) for f in files])
    if bad is not None:
        name = os.fsencode(files[int(bad[1:])]).decode("utf-8", "backslashreplace")
        raise ContextError(f"{name}: the file name is not valid UTF-8 (rename it)")
