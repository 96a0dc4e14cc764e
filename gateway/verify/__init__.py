"""Verified tools only: SchemaPin in the gateway, drift detection, approvals."""

from gateway.verify.state import ToolRecord, ToolStateStore
from gateway.verify.verifier import ToolVerifier

__all__ = ["ToolRecord", "ToolStateStore", "ToolVerifier"]
