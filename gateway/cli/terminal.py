"""Text from a log, made safe to print on an admin's terminal.

What the audit log holds is partly written by others: a caller's tool name, URI or argument, a
JWT's subject, and, in a log someone tampered with, any column (a record's key id ends up in
``verify``'s message). Printed as it is, an escape sequence in it retitles the window, clears
the screen, or returns the cursor and writes over the line: a ``FAILED`` verdict shown as
``intact``. Control, format (bidi) and unassigned characters are printed as ``\\uXXXX``.
"""

from __future__ import annotations

import unicodedata

_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every character that could steer a terminal written as ``\\uXXXX``."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _UNPRINTABLE else c for c in text)
