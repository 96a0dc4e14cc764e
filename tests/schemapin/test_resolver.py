"""Discovery over real HTTPS on 127.0.0.1 (test CA from trustme).

The loopback HTTPS server stands in for the remote domain's web server: the one allowed fake.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import schemapin
from schemapin import WellKnownResolver
from tests.local_http import serving

from .conftest import HttpsServer, Route, load_tool

WK = "/.well-known/schemapin.json"
REV = "/.well-known/schemapin-revocations.json"


def resolver(server: HttpsServer, **kw: Any) -> WellKnownResolver:
    return WellKnownResolver(verify=server.client_context(), timeout=5.0, **kw)


def resolve(r: WellKnownResolver, domain: str) -> schemapin.KeySnapshot:
    return asyncio.run(r.resolve(domain))


def publish(server: HttpsServer, key: ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    doc = schemapin.build_well_known(schemapin.public_key_pem(key), "Acme", **extra)
    server.serve_json(WK, doc)
    return doc


def rev_doc(domain: str, *fps: str) -> dict[str, Any]:
    return {
        "schemapin_version": "1.2",
        "domain": domain,
        "updated_at": "2026-01-01T00:00:00+00:00",
        "revoked_keys": [
            {"fingerprint": fp, "revoked_at": "2026-01-01T00:00:00+00:00", "reason": "key_compromise"}
            for fp in fps
        ],
    }


def test_resolve_and_cache(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    publish(https_server, key)
    r = resolver(https_server, ttl=60)

    async def twice() -> tuple[schemapin.KeySnapshot, schemapin.KeySnapshot]:
        return await r.resolve(https_server.domain), await r.resolve(https_server.domain)

    a, b = asyncio.run(twice())
    assert a.fingerprint == schemapin.fingerprint(key) and a.developer_name == "Acme"
    assert a is b and https_server.hits.count(WK) == 1
    _, tool = load_tool("create_issue")
    res = schemapin.verify_tool(
        tool, schemapin.sign_tool(tool, key), domain=https_server.domain, tool_id="create_issue", key_source=a
    )
    assert res.revocation == "checked"


def test_attack_redirect_not_followed(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    publish(https_server, key)
    https_server.routes["/evil.json"] = https_server.routes[WK]
    https_server.routes[WK] = Route(status=302, headers={"Location": "/evil.json"})
    with pytest.raises(schemapin.DiscoveryRedirect) as e:
        resolve(resolver(https_server), https_server.domain)
    assert e.value.code == "discovery_redirect" and e.value.reference_code == "discovery_fetch_failed"
    assert "/evil.json" not in https_server.hits


def test_attack_oversized_document(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    doc = publish(https_server, key)
    doc["padding"] = "x" * 200_000
    https_server.serve_json(WK, doc)
    with pytest.raises(schemapin.DiscoveryTooLarge) as e:
        resolve(resolver(https_server), https_server.domain)
    assert isinstance(e.value, schemapin.DiscoveryFailed)


def test_attack_revoked_key_via_endpoint(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    publish(https_server, key, revocation_endpoint=https_server.url(REV))
    https_server.serve_json(REV, rev_doc(https_server.domain, schemapin.fingerprint(key)))
    snap = resolve(resolver(https_server), https_server.domain)
    _, tool = load_tool("create_issue")
    with pytest.raises(schemapin.KeyRevoked):
        schemapin.verify_tool(
            tool,
            schemapin.sign_tool(tool, key),
            domain=https_server.domain,
            tool_id="create_issue",
            key_source=snap,
        )


def test_attack_revocation_endpoint_unreachable_strict(
    https_server: HttpsServer, key: ec.EllipticCurvePrivateKey
) -> None:
    """The reference treats an unreachable endpoint as 'not revoked' (probe B6); strict refuses."""
    publish(https_server, key, revocation_endpoint=https_server.url(REV))
    https_server.routes[REV] = Route(status=0)  # the server drops the connection
    snap = resolve(resolver(https_server), https_server.domain)
    assert snap.revocation == "unavailable"
    _, tool = load_tool("create_issue")
    sig = schemapin.sign_tool(tool, key)
    with pytest.raises(schemapin.RevocationUnavailable):
        schemapin.verify_tool(
            tool, sig, domain=https_server.domain, tool_id="create_issue", key_source=snap, mode="strict"
        )
    # A 404 is no better than a dropped connection.
    del https_server.routes[REV]
    snap404 = resolve(resolver(https_server), https_server.domain)
    with pytest.raises(schemapin.RevocationUnavailable):
        schemapin.verify_tool(
            tool, sig, domain=https_server.domain, tool_id="create_issue", key_source=snap404
        )


def test_unavailable_revocation_is_not_cached(
    https_server: HttpsServer, key: ec.EllipticCurvePrivateKey
) -> None:
    publish(https_server, key, revocation_endpoint=https_server.url(REV))
    r = resolver(https_server, ttl=600)
    assert resolve(r, https_server.domain).revocation == "unavailable"
    https_server.serve_json(REV, rev_doc(https_server.domain))
    assert resolve(r, https_server.domain).revocation == "checked"


def test_revocation_endpoint_on_other_origin_refused(
    https_server: HttpsServer, key: ec.EllipticCurvePrivateKey
) -> None:
    publish(https_server, key, revocation_endpoint="https://127.0.0.2:1/rev.json")
    snap = resolve(resolver(https_server), https_server.domain)
    assert snap.revocation == "unavailable"
    _, tool = load_tool("create_issue")
    with pytest.raises(schemapin.RevocationUnavailable):
        schemapin.verify_tool(
            tool,
            schemapin.sign_tool(tool, key),
            domain=https_server.domain,
            tool_id="create_issue",
            key_source=snap,
        )


def test_untrusted_certificate_fails(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    publish(https_server, key)
    # System CAs do not know the test CA: TLS must fail, never fall back.
    with pytest.raises(schemapin.DiscoveryFailed) as e:
        resolve(WellKnownResolver(timeout=5.0), https_server.domain)
    assert e.value.code == "discovery_fetch_failed"


def test_plain_http_refused_without_flag(https_server: HttpsServer) -> None:
    r = resolver(https_server)
    with pytest.raises(schemapin.InsecureTransport):
        asyncio.run(r.fetch_url(f"http://{https_server.domain}{WK}", domain=https_server.domain))
    with pytest.raises(ValueError):
        WellKnownResolver(verify=False)


def test_wrong_content_type_and_junk(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    https_server.routes[WK] = Route(body=b"<html>hi</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(schemapin.DiscoveryInvalid):
        resolve(resolver(https_server), https_server.domain)
    https_server.routes[WK] = Route(body=b'{"schema_version":"1.2","schema_version":"1.3"}')
    with pytest.raises(schemapin.DiscoveryInvalid):
        resolve(resolver(https_server), https_server.domain)
    https_server.routes[WK] = Route(body=json.dumps({"schema_version": "1.2"}).encode())
    with pytest.raises(schemapin.DiscoveryInvalid):
        resolve(resolver(https_server), https_server.domain)


def test_http_error_status(https_server: HttpsServer) -> None:
    with pytest.raises(schemapin.DiscoveryFailed) as e:
        resolve(resolver(https_server), https_server.domain)
    assert e.value.details["status"] == 404


def test_domain_normalisation() -> None:
    assert schemapin.normalize_domain("Bücher.EXAMPLE.") == "xn--bcher-kva.example"
    assert schemapin.well_known_url("ACME.example.") == "https://acme.example/.well-known/schemapin.json"
    for bad in ("https://acme.example", "acme.example/path", "a b.example", "user@acme.example", ""):
        with pytest.raises(schemapin.InvalidDomain):
            schemapin.normalize_domain(bad)


def test_plain_http_only_with_logged_flag(
    key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain HTTP on loopback (stand-in for a remote host), allowed only by the explicit flag."""
    from http.server import ThreadingHTTPServer

    from .conftest import _handler

    routes: dict[str, Route] = {}
    routes[WK] = Route(
        body=json.dumps(schemapin.build_well_known(schemapin.public_key_pem(key), "A")).encode()
    )
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes, []))) as httpd:
        domain = f"127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(schemapin.DiscoveryFailed):  # default: https:// against a plain server
            resolve(WellKnownResolver(timeout=5.0), domain)
        with caplog.at_level("WARNING", logger="schemapin"):
            r = WellKnownResolver(timeout=5.0, allow_insecure_http=True)
        assert any(rec.name == "schemapin" and rec.levelname == "WARNING" for rec in caplog.records)
        assert resolve(r, domain).fingerprint == schemapin.fingerprint(key)


def test_oversized_body_without_content_length(
    https_server: HttpsServer, key: ec.EllipticCurvePrivateKey
) -> None:
    """The cap holds while streaming, when the server does not declare a length."""
    doc = schemapin.build_well_known(schemapin.public_key_pem(key), "A")
    doc["padding"] = "x" * 300_000
    https_server.routes[WK] = Route(body=json.dumps(doc).encode(), send_length=False)
    with pytest.raises(schemapin.DiscoveryTooLarge):
        resolve(resolver(https_server), https_server.domain)


def test_ttl_zero_fetches_every_time(https_server: HttpsServer, key: ec.EllipticCurvePrivateKey) -> None:
    publish(https_server, key)
    r = resolver(https_server, ttl=0)
    resolve(r, https_server.domain)
    resolve(r, https_server.domain)
    assert https_server.hits.count(WK) == 2
