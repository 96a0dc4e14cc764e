"""Screening text as a model reads it: what reaches an agent's context from another party
(knowledge files, shared memories, bus messages) is screened as written and again as read.

A model reads Unicode tag characters (U+E0000 block) as the ASCII they shadow ("ASCII
smuggling"), and reads through formatting that splits a word for a rule: Markdown emphasis,
an in-word hyphen or dot, letters spaced apart. ``screened`` gives the high findings of the
text as written and, apart, those only this reading adds (kept in the categories that speak
to the model). Tool definitions are screened by ``Screener`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.screen.rules import INVISIBLE
from gateway.screen.screener import Finding, screen_texts

# the screening categories that speak to the model (its instructions), not about things
MODEL_DIRECTED = frozenset({"hidden-instructions", "concealment", "shadowing"})
# Unicode tag characters: invisible, and read by models as the ASCII they shadow. Dropped with
# the other invisible characters, a whole instruction written in them disappeared before
# screening and was stored and handed to agents as it was
_TAGS = re.compile("[\U000e0020-\U000e007e]")
_L = r"[^\W\d_]"  # a letter
# hyphens and dashes (ASCII, U+2010-2015), dots and middle dots: what splits a word for a rule
_DASHES = r"\-.\u00b7\u2010-\u2015\u2027\u30fb"
# inside a word only (a letter on both sides): emphasis/code marks ("Ig**nore"), a run of two
# or more '_' ("Ig__nore"), one or two dashes or dots ("pre-vious", "Ig--nore", "Ig\u2010nore").
# A mark touching '<', '>', '(', ',' or a blank stays: `std::vector<Instruction *>` is code,
# read as '<Instruction >' it tripped the tag rule (SP001)
_INWORD = re.compile(rf"(?<={_L})(?:[*~`]+|_{{2,}}|[{_DASHES}]{{1,2}})(?={_L})")
# emphasis as a balanced pair around words ("**Never**", "_previous_", "~~old~~"): opened after
# a blank or a quote, the words start and end with a letter and hold no mark (each opener
# scans to the next mark at most: linear), closed before a blank or punctuation. Code spans
# (backticks) are read as code: "stored in `secret` mode" stays; and a lone '_' ("if k in
# _secret:") is part of a name
_PAIR = re.compile(rf"(?<![^\s\"'])([*_~]{{1,3}})({_L}(?:[^\n<>*_~]{{0,200}}?{_L})?)\1(?![^\s.,;!?\"')])")
# the closing half of '__' emphasis opened inside a word ("Ig__nore__ all")
_TRAIL = re.compile(rf"(?<={_L})_{{2,}}(?=[\s.,;!?\"')]|\Z)")
# three or more single letters apart, by one blank (a space, a tab, U+00A0, U+3000), dash, dot,
# '/' or '_' ("I g n o r e", "I\u00a0g\u00a0n", "I.g.n.o.r.e", "I_g_n_o_r_e")
_SEP = rf"(?:[^\S\r\n]|[/_{_DASHES}])"
_SPACED = re.compile(rf"(?<!{_L})(?:{_L}{_SEP}){{2,}}{_L}(?!{_L})")
_SEPS = re.compile(_SEP)


def as_read(text: str) -> str:
    """``text`` as a model reads it: tag characters as the ASCII they stand for, the other
    invisible characters (a BOM, a soft hyphen, a zero-width space) gone."""
    text = _TAGS.sub(lambda m: chr(ord(m.group()) - 0xE0000), text)
    return INVISIBLE.sub("", text)


def unformatted(text: str) -> str:
    """``as_read(text)`` without what splits a word for a rule but not for a model: Markdown
    emphasis (a balanced pair around words, or marks inside a word), a dash or dot inside a
    word, letters spaced apart. Code stays code: a mark next to '<', '>', '(' or a blank, a
    backtick code span and a '_' inside or before a name are kept."""
    text = _INWORD.sub("", as_read(text))
    text = _TRAIL.sub("", _PAIR.sub(lambda m: m.group(2), text))
    return _SPACED.sub(lambda m: _SEPS.sub("", m.group()), text)


@dataclass(frozen=True)
class Reading:
    """The high findings of texts as written, and those only the reading as read adds."""

    written: tuple[Finding, ...]
    added: tuple[Finding, ...]

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.written + self.added

    @staticmethod
    def reasons(found: Iterable[Finding]) -> list[str]:
        return [f"{f.field}: {f.summary} ({f.rule})" for f in found]


def screened(
    fields: Sequence[tuple[str, str]],
    *,
    names: Iterable[tuple[str, str]] = (),
    joined: str | None = None,
    decoded: bool = False,
) -> Reading:
    """``fields`` screened as written (``names``: identifiers, ``joined``: all as one text) and
    again as read (each field named "... (as read)"; an added finding's rule is not one of the
    written ones). ``decoded``: the written text is taken ``as_read`` and only its findings
    that speak to the model count (a document is about things; a BOM in it is no reason)."""
    fields = list(fields)
    shown = [(f, as_read(t)) for f, t in fields] if decoded else fields
    written = list(screen_texts(shown, names=names, joined=joined).at_least("high"))
    if decoded:
        written = [f for f in written if f.category in MODEL_DIRECTED]
    views = [(f"{field} (as read)", unformatted(text)) for field, text in fields]
    if all(v == t for (_, v), (_, t) in zip(views, fields, strict=True)):
        return Reading(tuple(written), ())
    also = screen_texts(views, joined=f"{joined} (as read)" if joined else None).at_least("high")
    rules = {f.rule for f in written}
    added = [f for f in also if f.category in MODEL_DIRECTED and f.rule not in rules]
    return Reading(tuple(written), tuple(added))
