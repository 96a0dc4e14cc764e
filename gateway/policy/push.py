"""``symbi policy push``: upload the policy and its data to the OPA server(s) of ``[policy]``.

Replicas on ``[policy] engine = "opa"`` decide with one server (or a fleet behind one URL);
this puts the same ``policies.rego`` and data there through OPA's REST API:
``PUT /v1/policies/symbi/<file>`` (Rego as text) and ``PUT /v1/data/<key>`` per top-level key
of the data document. The server compiles on upload, so a broken policy is refused there and
the error names the line; then the decision rule is asked once to prove it is defined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.config.model import Config
from gateway.errors import ConfigError, PolicyError
from gateway.policy.loader import discover_files
from gateway.policy.remote import opa_headers, opa_verify


@dataclass(frozen=True)
class Pushed:
    policies: list[str]  # policy ids on the server
    data_keys: list[str]
    decision_defined: bool


def push(config: Config, *, policy: Path | None = None, data: Path | None = None) -> Pushed:
    pol = config.policy
    if pol.engine != "opa" or pol.url is None:
        raise ConfigError(
            'policy.engine: symbi policy push uploads to the OPA server of [policy] engine = "opa" '
            "(with policy.url); this config uses the embedded engine"
        )
    files = discover_files(policy or pol.path, data or pol.data)
    doc = json.loads(files.data.read_text(encoding="utf-8")) if files.data is not None else {}
    if not isinstance(doc, dict):
        raise ConfigError(f"policy.data ({files.data}): the data document must be a JSON object")
    base = pol.url.rstrip("/")
    verify = opa_verify(pol.tls_ca)
    pushed = Pushed([], [], False)
    with httpx.Client(
        verify=verify, timeout=max(10.0, pol.timeout_s), headers=opa_headers(pol.token), trust_env=False
    ) as c:
        pid = f"symbi/{files.policy.name}"
        _check(
            c.put(
                f"{base}/v1/policies/{pid}",
                content=files.policy.read_bytes(),
                headers={"content-type": "text/plain"},
            ),
            f"policy {files.policy}",
        )
        pushed.policies.append(pid)
        for key, value in doc.items():
            _check(c.put(f"{base}/v1/data/{key}", json=value), f"data key {key!r} of {files.data}")
            pushed.data_keys.append(key)
        path = pol.decision.removeprefix("data.").replace(".", "/")
        r = c.post(f"{base}/v1/data/{path}", json={"input": {}})
        _check(r, f"the decision {pol.decision}")
        defined = "result" in r.json()
    return Pushed(pushed.policies, pushed.data_keys, defined)


def _check(resp: httpx.Response, what: str) -> None:
    if resp.status_code in (200, 204):
        return
    try:
        body = resp.json()
        detail = body.get("message") or json.dumps(body)
    except ValueError:
        detail = resp.text[:500]
    raise PolicyError(f"the OPA server refused {what}: HTTP {resp.status_code}", reasons=[str(detail)])
