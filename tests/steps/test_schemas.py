"""compile_schema: a tool's schema as a validator whose ``$ref``s resolve within it (and the
drafts' metaschemas), never by fetching: a local HTTP server sees no request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing.exceptions import Unresolvable

from gateway.steps.schemas import compile_schema


@pytest.fixture
def asked() -> Iterator[tuple[str, list[str]]]:
    """(a URL served on this host, the paths asked of it)."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            body = b'{"type": "number"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/schema.json", paths
    finally:
        server.shutdown()
        server.server_close()


def test_a_ref_to_a_url_is_not_fetched(asked: tuple[str, list[str]]) -> None:
    url, paths = asked
    v = compile_schema({"type": "object", "properties": {"n": {"$ref": url}}})
    with pytest.raises(Unresolvable):
        list(v.iter_errors({"n": 1}))
    assert paths == []


def test_refs_within_the_schema_and_to_the_metaschema_resolve() -> None:
    v = compile_schema(
        {
            "$defs": {"n": {"type": "number"}},
            "properties": {
                "n": {"$ref": "#/$defs/n"},
                "s": {"$ref": "https://json-schema.org/draft/2020-12/schema"},
            },
        }
    )
    assert [e.validator for e in v.iter_errors({"n": 1, "s": {"type": "object"}})] == []
    assert [list(e.absolute_path) for e in v.iter_errors({"n": "x", "s": {"type": 12}})] == [
        ["n"],
        ["s", "type"],
    ]


def test_the_draft_is_the_one_the_schema_names() -> None:
    assert type(compile_schema({"$schema": "http://json-schema.org/draft-07/schema#"})) is Draft7Validator
