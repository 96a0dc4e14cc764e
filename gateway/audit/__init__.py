"""The audit trail: an Ed25519-signed, SHA-256-chained, durable (SQLite WAL) event log.

* ``AuditLog``: the writer and the gateway's ``EventSink`` (``emit``, ``record``, ``append``,
  ``flush``, ``rotate_key``, ``recent``, ``close``).
* ``verify_log`` / ``verify_jsonl``: return a ``VerifyResult``; ``.check()`` raises
  ``AuditIntegrityError`` naming the first bad sequence number and what is wrong.
* ``gateway.audit.report``: HIPAA / GDPR / SOX compliance reports.

Record format and hashing: ``gateway.audit.record``; storage choice: ``gateway.audit.store``.
"""

from gateway.audit.keys import exported_public_keys, load_public_keys
from gateway.audit.log import AuditLog
from gateway.audit.record import ROTATION_EVENT, AuditRecord, verify_record
from gateway.audit.verify import Problem, VerifyResult, verify_jsonl, verify_log
from gateway.errors import AuditIntegrityError, AuditLogBusy

__all__ = [
    "ROTATION_EVENT",
    "AuditIntegrityError",
    "AuditLog",
    "AuditLogBusy",
    "AuditRecord",
    "Problem",
    "VerifyResult",
    "exported_public_keys",
    "load_public_keys",
    "verify_jsonl",
    "verify_log",
    "verify_record",
]
