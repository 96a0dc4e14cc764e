"""``symbi audit register-shared``: sign the registration of a replica's chains shipped before
PostgreSQL migration 9 (``gateway.state.audit_roster``).

A running replica's shipper signs the registration of the chain it ships when PostgreSQL's row
starts where its log does. A chain it no longer ships (one from before a restart that followed
retention, or a replica's whole older data dir) needs this command, run on that replica with
its config: its key signs a registration for each unregistered chain whose records carry one
of its own keys, once those rows verify against its own public keys. A chain that starts after
seq 1 without a shipped hand-off (registered before migration 8) takes its start from the
signed ``audit.archived`` hand-off the chain itself holds at the seq before its start; without
one it is left unregistered (it keeps failing ``verify --shared``).

What this cannot tell: a chain whose front was cut AND renamed in PostgreSQL before this runs
(the rows are all it has to go on for a chain registered unsigned).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.record import GENESIS_HASH, key_id_of
from gateway.audit.retention import ARCHIVED_EVENT, HANDOFF_PREFIX, Handoff, signature_ok
from gateway.state.audit import SharedChain, record_keys, shared_chains, verify_rows
from gateway.state.audit_roster import key_signer, register
from gateway.state.postgres import Postgres


@dataclass(frozen=True)
class Outcome:
    chain: str
    registered: bool
    message: str


def register_old_chains(
    pg: Postgres, key: Ed25519PrivateKey, own: Mapping[str, Ed25519PublicKey], replica: str
) -> list[Outcome]:
    """Sign the registration of every unregistered chain of this replica (its records carry a
    key of ``own``: the replica's public keys, the ones it trusts for its own rows)."""
    own = {**own, key_id_of(key.public_key()): key.public_key()}
    chains = shared_chains(pg)
    out = []
    for chain in chains:
        if chain.registration is not None or not set(record_keys(pg, chain.chain)) & set(own):
            continue  # registered, or another replica's (it signs its own)
        out.append(_register_one(pg, chain, key, own, replica, [c.chain for c in chains]))
    return out


def _register_one(
    pg: Postgres,
    chain: SharedChain,
    key: Ed25519PrivateKey,
    own: Mapping[str, Ed25519PublicKey],
    replica: str,
    known: list[str],
) -> Outcome:
    handoff = chain.start_handoff
    if handoff is None and (chain.start_seq, chain.start_hash) != (1, GENESIS_HASH):
        handoff = _handoff_on_chain(pg, chain, own)
        if handoff is None:
            return Outcome(
                chain.chain,
                False,
                f"starts at seq {chain.start_seq} and no hand-off signed by this replica says the "
                "records before it were archived: not registered",
            )
    res = verify_rows(pg, replace(chain, start_handoff=handoff), own)
    if not res.ok:
        assert res.problem is not None
        p = res.problem
        return Outcome(
            chain.chain, False, f"does not verify (seq {p.seq}: {p.kind}: {p.message}): not registered"
        )
    reg = register(key_signer(key), chain.chain, replica, chain.start_seq, chain.start_hash, known)
    with pg.cursor() as cur:
        cur.execute(
            "UPDATE symbi_audit_chains SET registration=%s, replica=%s, start_handoff=%s"
            " WHERE chain=%s AND registration IS NULL",
            (reg.to_json(), replica, handoff, chain.chain),
        )
    return Outcome(chain.chain, True, f"registered as {replica} from seq {chain.start_seq}")


def _handoff_on_chain(pg: Postgres, chain: SharedChain, keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """The signed hand-off the chain recorded (``audit.archived``) that it starts right after."""
    with pg.cursor() as cur:
        cur.execute(
            "SELECT details FROM symbi_audit_events WHERE chain=%s AND type=%s ORDER BY seq",
            (chain.chain, str(ARCHIVED_EVENT)),
        )
        rows = cur.fetchall()
    for (details,) in rows:
        try:
            h = Handoff.from_dict(json.loads(details))
        except (ValueError, TypeError):
            continue  # a damaged row fails the chain's own verification
        if (h.seq + 1, h.chain_hash) == (chain.start_seq, chain.start_hash) and signature_ok(
            HANDOFF_PREFIX, asdict(h), keys
        ):
            return json.dumps(asdict(h), sort_keys=True)
    return None
