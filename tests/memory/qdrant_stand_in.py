"""A stand-in for a Qdrant server's REST API, for what cannot be real here: no Qdrant server
is installable on this machine (tests/memory/test_store.py runs the real one with QDRANT_URL).

It answers the calls ``gateway.memory.store.QdrantClientStore`` makes (collection info with the
gateway's metadata and indexes, upsert, count, query, scroll, delete) from a list of points,
until ``failing`` is set: then every request is answered 503 with Qdrant's error shape, as a
server that is overloaded, restarting behind a proxy, or out of disk answers.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.memory.store import FLOAT_FIELDS, KEYWORD_FIELDS, CollectionSpec

_PATH = re.compile(r"^/collections/([^/?]+)(/[^?]*)?")


class QdrantStandIn(ThreadingHTTPServer):
    def __init__(self, spec: CollectionSpec) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spec = spec
        self.points: dict[str, dict[str, Any]] = {}
        self.failing = False
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def info(self) -> dict[str, Any]:
        schema = {f: {"data_type": "keyword", "points": 0} for f in KEYWORD_FIELDS}
        schema.update({f: {"data_type": "float", "points": 0} for f in FLOAT_FIELDS})
        return {
            "status": "green",
            "optimizer_status": "ok",
            "segments_count": 1,
            "points_count": len(self.points),
            "config": {
                "params": {"vectors": {"size": self.spec.dimension, "distance": "Cosine"}},
                "hnsw_config": {"m": 16, "ef_construct": 200, "full_scan_threshold": 10000},
                "optimizer_config": {"default_segment_number": 0, "flush_interval_sec": 5},
                "metadata": self.spec.metadata(),
            },
            "payload_schema": schema,
        }


class _Handler(BaseHTTPRequestHandler):
    server: QdrantStandIn

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        srv = self.server
        srv.requests.append(f"{self.command} {self.path}")
        if srv.failing:
            self._answer(
                503, {"status": {"error": "Service Unavailable: the stand-in is failing"}, "time": 0}
            )
            return
        m = _PATH.match(self.path)
        if m is None or m.group(1) != srv.spec.name:
            self._answer(404, {"status": {"error": f"Not found: {self.path}"}, "time": 0})
            return
        op = (self.command, m.group(2) or "")
        result: Any
        if op == ("GET", "/exists"):
            result = {"exists": True}
        elif op == ("GET", ""):
            result = srv.info()
        elif op == ("PUT", "/points"):
            for p in body.get("points", []):
                srv.points[str(p["id"])] = p
            result = {"operation_id": 1, "status": "completed"}
        elif op == ("POST", "/points/count"):
            result = {"count": len(srv.points)}
        elif op == ("POST", "/points/query"):
            result = {"points": []}
        elif op == ("POST", "/points/scroll"):
            result = {"points": [], "next_page_offset": None}
        elif op == ("POST", "/points/delete"):
            result = {"operation_id": 2, "status": "completed"}
        else:
            self._answer(404, {"status": {"error": f"Not handled here: {op}"}, "time": 0})
            return
        self._answer(200, {"result": result, "status": "ok", "time": 0})

    do_GET = do_PUT = do_POST = _handle
