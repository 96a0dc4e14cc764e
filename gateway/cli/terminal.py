"""Text from a log, an upstream or a caller, made safe to print on an admin's terminal.

What the CLI prints is partly written by others: an upstream's tool names, descriptions and
schemas (``symbi tools``, ``symbi scan``), a caller's tool name, URI or argument and a JWT's
subject (``symbi audit``), an agent's or a bus message's fields, and, in a log someone
tampered with, any column. Printed as it is, an escape sequence in it (ESC, or the C1 CSI
U+009B) retitles the window, clears the screen, or returns the cursor and writes over the line:
a ``FAILED`` verdict shown as ``intact``; a bidi override shows text in another order. Control
(C0 and C1), format (bidi) and unassigned characters, surrogates and line separators are
printed as ``\\uXXXX``.

``escaped_output`` puts every admin command's stdout and stderr through ``printable_text`` (the
same, newlines and tabs kept), so no output path can miss it. JSON outputs go through it too:
``json.dumps`` escapes C0 controls but, with ``ensure_ascii=False``, writes C1, bidi and line
separator characters raw; the ``\\uXXXX`` put in their place inside a JSON string is the same
string to any JSON reader. ``symbi mcp`` and ``symbi serve`` (stdout is the protocol, stderr the
logs) are not wrapped; ``symbi sandbox run`` writes its program's bytes raw (``.buffer``), as
``docker run`` does.
"""

from __future__ import annotations

import contextlib
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, cast

_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ASCII_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # all but \t and \n


def _escape(c: str) -> str:
    return f"\\u{ord(c):04x}"


def printable(text: str) -> str:
    """``text`` with every character that could steer a terminal written as ``\\uXXXX``."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


def printable_text(text: str) -> str:
    """``printable`` for lines of output: newlines and tabs kept, every other control escaped."""
    if text.isascii():
        return _ASCII_CONTROLS.sub(lambda m: _escape(m.group()), text)
    return "".join(
        _escape(c) if c not in "\n\t" and unicodedata.category(c) in _UNPRINTABLE else c for c in text
    )


class EscapingWriter:
    """A text stream that writes ``printable_text`` of what it is given to ``raw``."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw  # what a deliberate control (a progress bar's \r) is written to

    def write(self, text: str) -> int:
        self.raw.write(printable_text(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, buffer, isatty, encoding, fileno...
        return getattr(self.raw, name)


def raw_stream(stream: TextIO) -> TextIO:
    """The stream under ``escaped_output``'s wrapper (itself when not wrapped)."""
    return cast(TextIO, getattr(stream, "raw", stream)) if isinstance(stream, EscapingWriter) else stream


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` escaped (``EscapingWriter``) for the block, then restored."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cast(TextIO, EscapingWriter(out)), cast(TextIO, EscapingWriter(err))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
