"""The policy engine backed by a real OPA server, through its Data API.

``POST {url}/v1/data/<decision path>`` with ``{"input": ...}``; any transport failure, a
non-200 answer, a body that is not JSON or an undefined decision is a deny with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from gateway.config.sections import PolicySection
from gateway.context import Decision
from gateway.policy.decision import deny, validate_decision
from gateway.policy.engine import PolicyEngine

log = logging.getLogger("symbi.policy")


def opa_verify(tls_ca: Path | None) -> ssl.SSLContext | bool:
    """How OPA's certificate is checked: against ``policy.tls_ca`` when given, else the system's."""
    return ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True


def opa_headers(token: str | None) -> dict[str, str]:
    """What every request to OPA carries: its bearer token, when one is configured."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def remote_engine(pol: PolicySection) -> RemoteEngine:
    """The engine of ``[policy] engine = "opa"``: the one construction from config."""
    assert pol.url is not None  # the config model requires it with engine = "opa"
    return RemoteEngine(
        pol.url, decision=pol.decision, timeout_s=pol.timeout_s, tls_ca=pol.tls_ca, token=pol.token
    )


def warn_open_opa(pol: PolicySection) -> bool:
    """Warn, at every start, when the OPA server answers a client that gives no token: any
    process that reaches its port (upstream servers included) could rewrite the policy. True
    when it warned. An OPA server that cannot be reached now is the decisions' to deny."""
    if pol.engine != "opa" or pol.url is None:
        return False
    verify = opa_verify(pol.tls_ca)
    try:
        with httpx.Client(verify=verify, timeout=pol.timeout_s, trust_env=False) as c:
            status = c.get(f"{pol.url.rstrip('/')}/v1/policies").status_code
    except httpx.HTTPError:
        return False
    if status != 200:
        return False
    log.warning(
        "policy: the OPA server %s answers clients that give no token: any process that reaches it, "
        "upstream servers included, can replace the policy; run it with --authentication=token "
        "--authorization=basic and set policy.token (or SYMBI_POLICY_TOKEN)",
        pol.url,
    )
    return True


class RemoteEngine(PolicyEngine):
    """A real OPA server through its Data API: ``POST {url}/v1/data/<decision path>``."""

    name = "opa"

    def __init__(
        self,
        url: str,
        *,
        decision: str = "data.symbi.decision",
        timeout_s: float = 2.0,
        tls_ca: Path | None = None,
        token: str | None = None,
    ) -> None:
        path = decision.removeprefix("data.").replace(".", "/")
        self._headers = opa_headers(token)
        self.endpoint = f"{url.rstrip('/')}/v1/data/{path}"
        self.timeout_s = timeout_s
        self._verify: ssl.SSLContext | bool = opa_verify(tls_ca)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s)

    def _parse(self, resp: httpx.Response) -> Decision:
        if resp.status_code == 401:
            return deny("OPA server refused the gateway's credentials (HTTP 401: policy.token)")
        if resp.status_code != 200:
            return deny(f"OPA server answered HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            return deny("OPA server answered with invalid JSON")
        if not isinstance(body, dict):
            return deny("OPA server answered with a non-object body")
        if "result" not in body:
            return deny("OPA: the decision is undefined (deny by default)")
        return validate_decision(body["result"], source="OPA")

    def _failed(self, e: BaseException) -> Decision:
        if isinstance(e, httpx.TimeoutException):
            reason = f"OPA server {self.endpoint} did not answer within {self.timeout_s:g} s"
        else:
            reason = f"OPA server {self.endpoint} unreachable: {type(e).__name__}"
        log.error("policy: %s", reason)
        return deny(reason)

    def decide(self, input: Mapping[str, Any]) -> Decision:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    verify=self._verify, timeout=self._timeout(), headers=self._headers, trust_env=False
                )
            client = self._client
        try:
            resp = client.post(self.endpoint, json={"input": dict(input)})
        except Exception as e:  # noqa: BLE001 - any transport failure is a deny
            return self._failed(e)
        return self._parse(resp)

    async def adecide(self, input: Mapping[str, Any]) -> Decision:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                verify=self._verify, timeout=self._timeout(), headers=self._headers, trust_env=False
            )
            self._aclients[loop] = client
        try:
            resp = await client.post(self.endpoint, json={"input": dict(input)})
        except Exception as e:  # noqa: BLE001 - any transport failure is a deny
            return self._failed(e)
        return self._parse(resp)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
