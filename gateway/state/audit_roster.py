"""Which replica chains PostgreSQL must hold: signed registrations, and the roster they make.

Whoever can write PostgreSQL can delete rows, so the set of chains cannot be read from the
rows alone: a chain deleted whole (its events, its ``symbi_audit_chains`` row, its keys) left
the others verifying. Two things outside the attacker's reach name the chains:

* each chain's **registration**, signed by the replica's key when its shipper first registers
  it (migration 9, ``symbi_audit_chains.registration``): the chain id, the replica's label, where
  the chain starts, and the chains PostgreSQL held at that moment (``known``). A relabelled
  chain, a moved start or a registration copied to another chain no longer matches its
  signature; a chain a later registration names must still be there.
* the **pinned key ids** (``[audit] pinned_keys``, or ``--public-key`` files): every replica's
  key is pinned, so every pinned key must have registered, or signed records in, a chain that
  verifies. A replica's only chain deleted leaves its pin with none.

Both live in PostgreSQL or name keys only, so neither can name a chain registered after every
surviving registration and under a key another chain still covers (the newest chain of a
replica whose data dir was replaced under the same key; without pins, the last chain
registered): deleted whole with its registration, PostgreSQL is as it was before that chain
existed. Two things narrow that:

* each replica's **roll call**: its shipper records an ``audit.shared_roster`` event in its own
  signed chain naming the chains PostgreSQL held that it had not named yet (at its start, and
  whenever a new one appears); a chain a verified roll call names must still be there. So a
  chain other replicas have seen cannot go unnoticed, unless their chains are cut back too
  (a cut tail is found only against exported checkpoints);
* outside PostgreSQL, the replicas' **exported checkpoints** (``[audit] checkpoint_export``,
  passed with ``--anchor``): the newest exported checkpoint of each log must be a record of a
  chain that verifies (``unheld_checkpoints``). Without them, the newest chain of a replica
  that is alone (or seen by no other replica yet) can still be deleted unnoticed.

A chain registered before migration 9 has no registration: it fails until its replica signs
one (its shipper does at its next start when the chain is the one it ships; ``symbi audit
register-shared`` for the others). Failing it, instead of trusting it unsigned, keeps the
check for new chains: stripping a registration must not turn a chain into an old one.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.record import canonical_json, key_id_of
from gateway.audit.retention import signature_ok
from gateway.audit.verify import Problem
from gateway.events import Event

if TYPE_CHECKING:
    from gateway.audit import AuditLog
    from gateway.audit.store import Anchor

REGISTRATION_PREFIX = b"symbi-audit-registration-v1\x00"
MIGRATION = 9  # the migration that added registrations (gateway.state.postgres.MIGRATIONS)
REGISTER_COMMAND = "symbi audit register-shared"
SIGN_TIMEOUT_S = 10.0
# the replica's signing key, wherever it is held: given what to sign for a key id, it returns
# (key id, base64 signature); the key id is the signer's own (a writer's changes on rotation)
Sign = Callable[[Callable[[str], bytes]], tuple[str, str]]


@dataclass(frozen=True)
class Registration:
    """A replica's signed word that ``chain`` is its own, under ``replica``, from ``start_seq``."""

    chain: str
    replica: str
    start_seq: int
    start_hash: str
    known: list[str] = field(default_factory=list)  # the chains PostgreSQL held when it registered
    ts_ns: int = 0
    key_id: str = ""
    signature: str = ""

    @classmethod
    def from_json(cls, text: str) -> Registration:
        """Raises ValueError when malformed."""
        try:
            doc = json.loads(text)
            reg = cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed registration: {e}") from None
        if not isinstance(reg.known, list) or not all(isinstance(c, str) for c in reg.known):
            raise ValueError("malformed registration: known is not a list of chain ids")
        return reg

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _message(doc: Mapping[str, Any]) -> bytes:
    return REGISTRATION_PREFIX + canonical_json({k: v for k, v in doc.items() if k != "signature"}).encode()


def register(
    sign: Sign, chain: str, replica: str, start_seq: int, start_hash: str, known: Iterable[str]
) -> Registration:
    """The signed registration of ``chain`` (``sign`` tells the key id it signs with)."""
    reg = Registration(chain, replica, start_seq, start_hash, sorted(set(known) - {chain}), time.time_ns())
    doc = asdict(reg)
    kid, sig = sign(lambda key_id: _message(doc | {"key_id": key_id}))
    return Registration(**(doc | {"key_id": kid, "signature": sig}))


def key_signer(key: Ed25519PrivateKey) -> Sign:
    """A signer over a key the process holds itself (``symbi audit register-shared``)."""
    kid = key_id_of(key.public_key())
    return lambda message_for: (kid, base64.b64encode(key.sign(message_for(kid))).decode("ascii"))


def roll_call(details: Any) -> list[str] | None:
    """The chain ids an ``audit.shared_roster`` event's details name (None: malformed)."""
    named = details.get("chains") if isinstance(details, dict) else None
    if isinstance(named, list) and all(isinstance(c, str) for c in named):
        return named
    return None


def log_roll_call(log: AuditLog) -> Callable[[list[str]], None]:
    """Record the chains a replica's shipper saw in PostgreSQL in its own log (signed, chained)."""
    return lambda chains: log.emit(Event.AUDIT_SHARED_ROSTER, {"chains": chains})


def log_signer(log: AuditLog) -> Sign:
    """A signer over a running log's key, on its writer thread (the gateway's shipper)."""
    # bounded: a writer that does not answer is an AuditError the shipper retries after
    return lambda message_for: log.maintain(
        lambda ctx: (ctx.key_id, ctx.sign(message_for(ctx.key_id))), timeout=SIGN_TIMEOUT_S
    )


def registration_problem(
    text: str | None,
    chain: str,
    replica: str,
    start: tuple[int, int, str],
    keys: Mapping[str, Ed25519PublicKey],
) -> tuple[Problem | None, Registration | None]:
    """What is wrong with the chain's registration (``start``: seq for the problem, start seq,
    start hash), or the registration that vouches for the row."""
    at, start_seq, start_hash = start
    if text is None:
        why = (
            f"chain has no signed registration (registered before PostgreSQL migration {MIGRATION}, "
            f"or removed): run `{REGISTER_COMMAND}` on the replica that writes it (or restart it)"
        )
        return Problem(at, "unregistered", why), None
    try:
        reg = Registration.from_json(text)
    except ValueError as e:
        return Problem(at, "registration", str(e)), None
    if not signature_ok(REGISTRATION_PREFIX, asdict(reg), keys):
        return Problem(at, "registration", "registration is not validly signed by a trusted key"), None
    signed = (reg.chain, reg.replica, reg.start_seq, reg.start_hash)
    if signed != (chain, replica, start_seq, start_hash):
        why = (
            f"the signed registration says chain {reg.chain[:16]} of replica {reg.replica!r} from seq "
            f"{reg.start_seq}; PostgreSQL's row says chain {chain[:16]} of {replica!r} from seq {start_seq}"
        )
        return Problem(at, "registration", why), None
    return None, reg


@dataclass(frozen=True)
class Missing:
    """A chain the roster says must be in PostgreSQL and is not (``chain`` or ``key_id`` set)."""

    message: str
    chain: str | None = None
    key_id: str | None = None


def missing_chains(
    present: Iterable[str],
    registrations: Iterable[Registration],
    roots: Iterable[str],
    covered: Iterable[str],
    roll_calls: Iterable[tuple[str, Iterable[str]]] = (),
) -> list[Missing]:
    """Chains named by a verified registration or roll call (what names them, the chains) and
    gone; root (pinned) key ids that neither registered nor signed records in a verified chain
    (``covered``)."""
    have = set(present)
    out: list[Missing] = []
    named = [
        (f"the signed registration of chain {r.chain[:16]} ({r.replica})", r.known) for r in registrations
    ]
    for by, chains in [*named, *roll_calls]:
        for c in chains:
            if c not in have:
                have.add(c)  # named once
                out.append(Missing(f"chain {c} is gone from PostgreSQL: {by} names it", chain=c))
    seen = set(covered)
    for kid in roots:
        if kid not in seen:
            out.append(
                Missing(
                    f"pinned key {kid} registered no chain that verifies in PostgreSQL: its replica's "
                    "chain was deleted, or that replica has not shipped yet",
                    key_id=kid,
                )
            )
    return out


def unheld_checkpoints(newest: Mapping[str, Anchor], held: Callable[[Anchor], bool]) -> list[Missing]:
    """The exported checkpoints (source -> the newest checkpoint of one log in one file) that no
    chain verified in PostgreSQL holds (``held``: a verified chain has that record, same hash)."""
    return [
        Missing(
            f"the exported checkpoint of {source} at seq {a.seq} (key {a.key_id}) is in no chain that "
            "verifies in PostgreSQL: its chain was deleted, cut, or has not shipped that far yet",
            key_id=a.key_id,
        )
        for source, a in sorted(newest.items())
        if not held(a)
    ]
