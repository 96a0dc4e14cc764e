"""``tools/list`` in pages (the spec's ``cursor`` / ``nextCursor``).

A catalogue of 2,000 tools is over 1 MiB as one reply: more than one SSE event the SDK
client accepts by default. The front serves it in pages of ``mcp.list_page_size`` catalogue
entries instead.

The cursor is opaque to the client and checked here: it names the catalogue snapshot the
listing began on by the digest of its ordered tool names (``LiveCatalog.digest``: the same on
every replica that serves the same catalogue) and the position in that order, and is MAC'd
(HMAC-SHA256 over the caller's qualified id too) under a key derived from the secret the
replicas share (``[bus] secret`` / ``SYMBI_BUS_SECRET``, else the data dir's ``bus-secret``:
one gateway, across its restarts). So a stateless client's next page may go to any replica,
and a cursor outlives a restart. A cursor that was altered, made up, issued to another
principal or under another secret is an invalid-params error; so is one whose order is no
longer known here (replaced by ``LiveCatalog.RETAINED`` other orders since, or never seen:
the client lists from the start). While the catalogue changes, a listing keeps walking the
order of the snapshot it began on (no tool listed twice, none skipped), showing for each name
what the current catalogue serves: a tool removed or blocked since is left out, and the
client hears ``list_changed`` and lists anew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.app import Gateway
from gateway.bus.crypto import config_secret, derived_key
from gateway.catalog import CatalogTool
from gateway.config.model import Config
from gateway.context import Principal

_MAC_BYTES = 16
# the HKDF label of the cursor key: never the shared secret itself (the bus MACs its key
# directory with it), and a new format gets a new label (old cursors are then refused)
CURSOR_KEY_INFO = b"symbi tools/list cursor/v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cursor_key(secret: bytes) -> bytes:
    """The cursors' MAC key, derived from a shared 32-byte secret."""
    return derived_key(secret, CURSOR_KEY_INFO)


def config_cursor_key(config: Config) -> bytes:
    """The cursor key of ``config``'s gateway: from ``[bus] secret`` when set (the replicas'
    shared one), else from ``<data_dir>/bus-secret`` (made on first use). Read once the data
    dir is the gateway's (``make_gateway`` secured it): a loose secret file is refused."""
    return cursor_key(config_secret(config))


def invalid_cursor(why: str) -> MCPError:
    return MCPError(code=types.INVALID_PARAMS, message=f"invalid cursor: {why}", data={"param": "cursor"})


class ToolPager:
    """Pages of the tools a principal may see; cursors made and checked with one key
    (``cursor_key``: every pager keyed from the same secret accepts the others' cursors)."""

    def __init__(self, page_size: int, key: bytes) -> None:
        self.page_size = page_size
        self._key = key

    def _mac(self, principal: Principal, body: bytes) -> bytes:
        msg = principal.qualified.encode() + b"\0" + body
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, principal: Principal, digest: str, offset: int) -> str:
        body = f"{digest}:{offset}".encode()
        return f"{_b64(body)}.{_b64(self._mac(principal, body))}"

    def decode(self, principal: Principal, cursor: str) -> tuple[str, int]:
        """(catalogue order digest, offset) of a cursor a gateway with this key gave ``principal``."""
        try:
            body_text, mac_text = cursor.split(".")
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (ValueError, binascii.Error):
            raise invalid_cursor("not a cursor this gateway issued") from None
        if not hmac.compare_digest(mac, self._mac(principal, body)):
            raise invalid_cursor("not a cursor this gateway issued to this caller")
        try:  # ours, so well formed; a key shared with another format must not crash here
            digest, offset_text = body.decode("ascii").split(":")
            offset = int(offset_text)
        except ValueError:
            raise invalid_cursor("not a cursor of this gateway's format") from None
        if offset < 0:
            raise invalid_cursor("not a cursor of this gateway's format")
        return digest, offset

    async def page(
        self, gw: Gateway, principal: Principal, cursor: str | None
    ) -> tuple[list[CatalogTool], str | None]:
        """The tools of one page and the cursor of the next (None: this was the last)."""
        live = gw.live
        if cursor is None:
            digest, start = live.digest, 0
        else:
            digest, start = self.decode(principal, cursor)
        names = live.order(digest)
        if names is None:
            raise invalid_cursor("the tool catalogue changed since this listing began: list from the start")
        current = gw.catalog.tools
        out: list[CatalogTool] = []
        at = start
        while at < len(names) and not out:  # no empty page before the end
            chunk = names[at : at + self.page_size]
            at += len(chunk)
            served = [e for n in chunk if (e := current.get(n)) is not None and not e.info.blocked]
            out = await gw.visible_among(principal, served)
        return out, (self.encode(principal, digest, at) if at < len(names) else None)
