"""Prompts, resources and resource templates pinned as tools are.

What an upstream lists about each (name or URI, description, arguments, mimeType,
annotations, ``_meta``...) goes into the model's context like a tool description, so each
is assessed by the tool verifier and kept in the same tool state, under a name of its own:
``KIND:UPSTREAM__IDENT`` (``prompt:fs__summarize``, ``resource:fs__docs://readme``,
``template:fs__files://{path}``). Tool names never hold ``:`` and server names never hold
``__``, so these names are nobody else's. The content a read or a get returns is dynamic
and is not pinned.

SchemaPin signs tools only: under ``strict`` these follow the ``tofu`` rules (pinned on
first sight, a change is drift, one added after the first approved listing is pending).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.context import ToolInfo

if TYPE_CHECKING:  # types only: the admin CLI imports this without the MCP SDK (~1 s)
    from mcp import types

ListedKind = Literal["prompt", "resource", "template"]
KINDS: tuple[ListedKind, ...] = ("prompt", "resource", "template")


class _Listing(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def prompts(self) -> list[types.Prompt]: ...
    @property
    def resources(self) -> list[types.Resource]: ...
    @property
    def templates(self) -> list[types.ResourceTemplate]: ...


def listed_name(kind: ListedKind, upstream: str, ident: str) -> str:
    """The state's and the CLI's name of one listed item (see the module docstring)."""
    return f"{kind}:{upstream}__{ident}"


def kind_of(name: str) -> ListedKind | None:
    """The kind a state or verdict name is of (None: a tool)."""
    head, sep, _ = name.partition(":")
    return head if sep and head in KINDS else None


def is_listed(name: str) -> bool:
    """Whether ``name`` (a verdict's) is a prompt, resource or template rather than a tool."""
    return kind_of(name) is not None


def listed_mode(mode: str) -> str:
    """The mode a listed item is assessed under: nothing signs prompts or resources."""
    return "tofu" if mode == "strict" else mode


def _info(kind: ListedKind, upstream: str, ident: str, item: Any) -> ToolInfo:
    return ToolInfo(
        name=listed_name(kind, upstream, ident),
        original_name=f"{kind}:{ident}",
        upstream=upstream,
        definition=item.model_dump(by_alias=True, mode="json", exclude_unset=True),
    )


def listed_infos(listings: Iterable[_Listing]) -> list[ToolInfo]:
    """Every listed prompt, resource and template, not yet assessed (the verifier's input)."""
    out: list[ToolInfo] = []
    for up in listings:
        out += [_info("prompt", up.name, p.name, p) for p in up.prompts]
        out += [_info("resource", up.name, str(r.uri), r) for r in up.resources]
        out += [_info("template", up.name, t.uri_template, t) for t in up.templates]
    return out


def hold_reason(verdicts: Mapping[str, ToolInfo], kind: ListedKind, upstream: str, ident: str) -> str | None:
    """Why the item is not served (None: it is). No verdict is no admission (fail closed)."""
    name = listed_name(kind, upstream, ident)
    info = verdicts.get(name)
    if info is None or info.upstream != upstream:
        return f"{name} has not been verified"
    if not info.blocked:
        return None
    why = info.verification_reason or info.verification
    return f"{name} is {info.verification}: {why}"
