"""Verified tools only: SchemaPin in the gateway, drift detection, approvals.

``gateway.verify.verifier.ToolVerifier`` (imported where needed: it pulls in the MCP SDK,
which the CLI's light commands should not pay for), ``gateway.verify.state`` (the tool
state store) and ``gateway.verify.manifest`` (signed approved manifests).
"""
