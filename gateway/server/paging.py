"""``tools/list`` in pages (the spec's ``cursor`` / ``nextCursor``).

A catalogue of 2,000 tools is over 1 MiB as one reply: more than one SSE event the SDK
client accepts by default. The front serves it in pages of ``mcp.list_page_size`` catalogue
entries instead.

The cursor is opaque to the client and checked here: it names the catalogue snapshot the
listing began on (``LiveCatalog.version``) and the position in that snapshot's order, and is
MAC'd (HMAC-SHA256 with a key of this process, over the caller's qualified id too). A cursor
that was altered, made up, or issued to another principal is an invalid-params error; so is
one whose snapshot was replaced more than ``LiveCatalog.RETAINED`` times since. While the
catalogue changes, a listing keeps walking the order of the snapshot it began on (no tool
listed twice, none skipped), showing for each name what the current catalogue serves: a tool
removed or blocked since is left out, and the client hears ``list_changed`` and lists anew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.app import Gateway
from gateway.catalog import CatalogTool
from gateway.context import Principal

_MAC_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def invalid_cursor(why: str) -> MCPError:
    return MCPError(code=types.INVALID_PARAMS, message=f"invalid cursor: {why}", data={"param": "cursor"})


class ToolPager:
    """Pages of the tools a principal may see; cursors made and checked with one key."""

    def __init__(self, page_size: int, key: bytes | None = None) -> None:
        self.page_size = page_size
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, principal: Principal, body: bytes) -> bytes:
        msg = principal.qualified.encode() + b"\0" + body
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, principal: Principal, version: int, offset: int) -> str:
        body = f"{version}:{offset}".encode()
        return f"{_b64(body)}.{_b64(self._mac(principal, body))}"

    def decode(self, principal: Principal, cursor: str) -> tuple[int, int]:
        """(catalogue version, offset) of a cursor this process gave ``principal``."""
        try:
            body_text, mac_text = cursor.split(".")
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (ValueError, binascii.Error):
            raise invalid_cursor("not a cursor this gateway issued") from None
        if not hmac.compare_digest(mac, self._mac(principal, body)):
            raise invalid_cursor("not a cursor this gateway issued to this caller")
        version, offset = (int(x) for x in body.decode().split(":"))  # ours: well formed
        return version, offset

    async def page(
        self, gw: Gateway, principal: Principal, cursor: str | None
    ) -> tuple[list[CatalogTool], str | None]:
        """The tools of one page and the cursor of the next (None: this was the last)."""
        live = gw.live
        if cursor is None:
            version, start = live.version, 0
        else:
            version, start = self.decode(principal, cursor)
        snapshot = live.at(version)
        if snapshot is None:
            raise invalid_cursor("the tool catalogue changed since this listing began: list from the start")
        names = list(snapshot.tools)
        current = gw.catalog.tools
        out: list[CatalogTool] = []
        at = start
        while at < len(names) and not out:  # no empty page before the end
            chunk = names[at : at + self.page_size]
            at += len(chunk)
            served = [e for n in chunk if (e := current.get(n)) is not None and not e.info.blocked]
            out = await gw.visible_among(principal, served)
        return out, (self.encode(principal, version, at) if at < len(names) else None)
