"""Mutation testing of the security-critical modules (`make mutate`; not part of `make test`).

Runs mutmut once per module group, each in a scratch copy of the tracked tree, with the
in-process tests that cover that group. mutmut picks the tests per mutated function from
the calls it sees in the pytest process, so code reached only through a `symbi`/gateway
subprocess shows up as "no tests": each group lists tests that call its code in-process.

Results accumulate in reports/mutation.json (one entry per group, replaced when the group
runs again) and reports/mutation.md is rendered from it. A surviving mutant is accounted
for in scripts/mutation-equivalents.toml: either the reason it is equivalent (cannot change
behaviour a test may observe) or the test added to kill it. Anything else is listed as
UNEXPLAINED, which is a hole to close.

    python scripts/mutate.py                 # every group
    python scripts/mutate.py steps auth      # some groups
    python scripts/mutate.py --list          # the groups
    python scripts/mutate.py --render        # re-render the report from the JSON
    python scripts/mutate.py runtime --recheck survived --recheck "not checked"  # continue a partial run
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPORT_JSON = ROOT / "reports" / "mutation.json"
REPORT_MD = ROOT / "reports" / "mutation.md"
EQUIVALENTS = ROOT / "scripts" / "mutation-equivalents.toml"
# Tests look for these next to the tree (ROOT/.venv etc.); mutmut runs pytest in mutants/.
LINKED = (".venv", ".venv-schemapin-ref", "node_modules")
ALSO_COPY = ["scripts", "policies", "policies.rego", "examples"]


@dataclass(frozen=True)
class Group:
    name: str
    mutate: tuple[str, ...]  # files or globs ending in * (mutmut's only_mutate)
    tests: tuple[str, ...]  # pytest paths/node ids that call the code in-process
    note: str = ""
    # mutant-name patterns (fnmatch, as `mutmut run` takes them): only these functions' mutants
    # run and are reported; the group's other functions are out of its scope, not "not checked"
    only: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # set for the group's run (e.g. fail, not skip, a broken tier)
    # mutmut's per-mutant time limit is (the tests' time + 1 s) x this (its default 15): lower for
    # a group whose slow mutants are performance regressions (a defeated cache), detected as timeouts
    timeout_multiplier: float | None = None


GROUPS: tuple[Group, ...] = (
    # test_verify/test_crypto call _verify in-process; the interop tests run the reference in a subprocess
    Group(
        "schemapin-verify",
        ("schemapin/_verify.py",),
        (
            "tests/schemapin/test_verify.py",
            "tests/schemapin/test_crypto.py",
            "tests/schemapin/test_bundle.py",
        ),
    ),
    Group(
        "steps",
        ("gateway/steps/*", "gateway/policy/decision.py", "gateway/deadlines.py"),
        ("tests/steps/", "tests/policy/test_decision.py", "tests/test_deadlines.py"),
    ),
    Group(
        "audit-verify",
        ("gateway/audit/verify.py",),
        (
            "tests/audit/test_verify.py",
            "tests/audit/test_verify_paths.py",
            "tests/audit/test_verify_walk.py",
            "tests/audit/test_log.py",
            "tests/audit/test_keys.py",
        ),
    ),
    Group(
        "audit-store",
        ("gateway/audit/store.py",),
        (
            "tests/audit/test_store.py",
            "tests/audit/test_log.py",
            "tests/audit/test_durability.py",
            "tests/audit/test_verify.py",
            "tests/audit/test_audit_cmd.py::test_query_filters",
        ),
    ),
    # the on-the-wire tests start a gateway per test (about 7 s a mutant): the unit tests only
    Group(
        "auth",
        ("gateway/server/auth.py", "gateway/apikeys.py"),
        tuple(
            f"tests/server/http/test_auth.py::{t}"
            for t in (
                "test_key_store_keeps_only_a_hash_with_mode_0600",
                "test_key_store_refuses_tampered_unknown_and_revoked_keys",
                "test_jwt_good_tokens_give_principal_with_roles",
                "test_jwt_refused",
                "test_authenticator_fails_closed_without_jwt_config_and_without_credentials",
                "test_jwks_url",
                "test_jwks_url_unreachable_fails_closed",
                "test_anonymous_only_when_named",
                "test_jwt_without_roles_is_a_user_with_no_roles",
                "test_jwt_clock_skew_leeway",
                "test_an_api_key_gives_its_principal_in_process",
                "test_key_file_layout_defaults_and_parent_dirs",
                "test_a_key_with_a_non_hex_id_is_malformed",
                "test_a_failed_key_file_write_leaves_no_readable_temp_file",
                "test_the_authenticator_from_config_verifies_jwts_and_keys",
                "test_a_bad_jwks_file_is_a_config_error_naming_the_key",
                "test_api_keys_on_an_unreachable_postgres_refuse_at_start",
                "test_principals_carry_their_namespace",
                "test_a_new_key_carries_32_random_bytes_and_refuses_an_empty_principal",
            )
        )
        # the JWKS URL client's cache lifetime (a removed key stops verifying) and fetch timeout
        + ("tests/server/http/test_auth_jwks.py",),
    ),
    Group(
        "policy",
        (
            "gateway/policy/engine.py",
            "gateway/policy/inputdoc.py",
            "gateway/policy/redact.py",
        ),
        (
            "tests/policy/test_engine.py",
            "tests/policy/test_inputdoc.py",
            "tests/policy/test_redact.py",
            # the remote engine against a real OPA, hot reload and its custody checks (all in-process)
            "tests/policy/test_engine_remote.py",
            "tests/policy/test_watch.py",
            "tests/policy/test_reload_custody.py",
            # status(), the reload event's source, the publish hook, the per-thread engine, the counters
            "tests/policy/test_engine_state.py",
            # the EmbeddedEngine mutants that defeat its per-thread engine cache build an engine per
            # decision (minutes a mutant at the default 15x): a performance regression, a timeout at 4x.
            # Not lower: mutmut's fork server stops a mutant's tests after (their measured time + 1 s)
            # x this of WALL time (and twice that of CPU); at 2x (tried 1 Dec on the shared machine)
            # fast redact/inputdoc mutants, survivors among them, ran past it (177 timeouts in the
            # first 577 mutants, against 111 in all at 4x): hidden survivors, not a faster run
        ),
        timeout_multiplier=4.0,
    ),
    # tests/verify's gateway-level tests run `symbi` subprocesses (unattributable): test_verifier is in-process
    Group(
        "verify",
        ("gateway/verify/*",),
        ("tests/verify/test_verifier.py", "tests/verify/test_verifier_refresh.py"),
    ),
    # the tiers' limit and network settings only, with the attack tests on them (every mutant
    # runs real containers, seconds each; the slow many-runs leftovers test is left out)
    Group(
        "sandbox-limits",
        (
            "gateway/sandbox/docker_tier.py",
            "gateway/sandbox/bwrap.py",
            "gateway/sandbox/cgroups.py",
        ),
        tuple(
            f"tests/sandbox/test_tiers.py::{t}"
            for t in (
                "test_network_blocked",
                "test_network_probe_detects_a_bridged_container",
                "test_host_secrets_not_readable",
                "test_host_filesystem_not_writable",
                "test_unprivileged_identity",
                "test_fork_bomb_contained",
                "test_memory_hog_killed",
                "test_infinite_loop_stopped",
                "test_output_flood_truncated",
                "test_the_sandbox_sees_no_network_interface_but_its_own_loopback",
                "test_no_capability_is_left_even_in_the_bounding_set",
                "test_the_root_filesystem_is_mounted_read_only",
                "test_the_docker_host_config_carries_every_limit",
            )
        )
        + ("tests/sandbox/test_bwrap.py",),
        only=(
            "gateway.sandbox.docker_tier.*ǁ_host_config__mutmut_*",
            "gateway.sandbox.docker_tier.*ǁpids_limit__mutmut_*",
            "gateway.sandbox.bwrap.*ǁ_bwrap_argv__mutmut_*",
            "gateway.sandbox.cgroups.*ǁpids_limit_hit__mutmut_*",
        ),
        env=(
            # a mutant that breaks a tier makes it "unavailable": that must fail the tests, not skip
            # them (a skip is a pass to mutmut), nor run scripts/setup-sandbox.sh per mutant
            ("SYMBI_SANDBOX_REQUIRED", "1"),
            ("SYMBI_SANDBOX_NO_SETUP", "1"),
        ),
    ),
    # the clean-up of sandbox containers: removal's retries and bounds, a create whose answer was
    # lost, Docker failures as the error family, the warm pool's close and the calls it cuts short
    # (real containers; the pool-close tests on the docker tier only: gvisor doubles the time)
    Group(
        "sandbox-cleanup",
        ("gateway/sandbox/docker_api.py", "gateway/sandbox/pool.py"),
        ("tests/sandbox/test_docker_api.py",)
        + tuple(
            f"tests/sandbox/test_pool_close.py::{t}[docker]"
            for t in (
                "test_a_close_while_a_refill_is_starting_leaves_no_container",
                "test_a_close_during_a_call_waits_for_it_and_leaves_no_container",
                "test_a_call_cut_short_by_close_is_interrupted_and_leaves_no_container",
            )
        ),
        note="Out of scope: the pool's filling and serving protocol (tests/sandbox/test_pool.py), runsc state.",
        only=tuple(
            f"gateway.sandbox.{f}__mutmut_*"
            for f in (
                "docker_api.x__transient",
                "docker_api.x_backoff",
                "docker_api.x_remove_container",
                "docker_api.x_answer_lost",
                "docker_api.x_reclaim",
                "docker_api.x_sandbox_failure",
                "docker_api.x_docker_errors",
                "pool.xǁWarmPoolǁclose",
                "pool.xǁWarmPoolǁtry_run",
                "pool.xǁWarmPoolǁ_end_call",
                "pool.xǁWarmPoolǁ_was_cut",
            )
        ),
        env=(("SYMBI_SANDBOX_REQUIRED", "1"), ("SYMBI_SANDBOX_NO_SETUP", "1")),
    ),
    # the runtime core, lifecycle, scheduler, breakers and budgets; the agent and schedule
    # steps' tests drive the runtime in-process too; hosted.py's supervisor and its sandboxed
    # runs in every tier are tested in-process (test_hosted_*, test_gvisor_agent)
    Group(
        "runtime",
        ("gateway/runtime/*",),
        tuple(
            f"tests/runtime/test_{t}.py"
            for t in (
                "core",
                "breakers",
                "identity",
                "lifecycle",
                "resources",
                "runtime_keys",
                "scheduler",
                "stable_ids",
                "registry",
                "metrics",
                "hosted_supervisor",
                "hosted_limits",
                "gvisor_agent",
                "hosted_isolation",
            )
        )
        + ("tests/steps/test_schedule.py", "tests/steps/test_agent.py"),
    ),
    # the agent bus, its security-critical part only (Group.only): sealing, signing and encrypting a
    # message and its header (crypto, sealing, message), the receive checks before decrypting
    # (signature, recipient and subscription, timestamp window, replay window: receiving and the
    # backends' first_seen), the offline `symbi bus verify` (signatures, the chain of ids), who may
    # send to whom (Bus._me/_peer/_decide with the policy's bus kinds and rate limit, the policy
    # authorizer) and the quotas (body size, inbox buffer, request timeout); the built-in's call
    # (bodies never reach the audit log). Out of scope: delivery plumbing (fetch/settle/expiry
    # sweeps, request/reply pumps, notifications, agents' retirement, stats and footprints), which
    # the bus tests cover but a broken one loses or delays messages rather than letting one through.
    # The tests: the in-process ones (test_bus_cmd, test_http_bus... run `symbi`) that check what is
    # in scope; against the embedded store, and also against a real redis-server where the Redis
    # backend's own code is in scope (its enqueue script's buffer bound, its replay records): each
    # test starts its own redis-server, and the receive checks above the backends are the same code.
    Group(
        "bus",
        ("gateway/bus/*",),
        (
            "tests/bus/test_verify.py",
            "tests/bus/test_message.py",
            "tests/bus/test_receive_checks.py",
            "tests/bus/test_authorization.py",
            "tests/bus/test_quotas.py",
            "tests/bus/test_gateway_bus.py",
            "tests/bus/test_bus_policy_input.py",
            *(
                f"tests/bus/test_keys_and_wire.py::test_{t}"
                for t in (
                    "a_pair_key_is_derived_as_documented_and_bound_to_both_agents",
                    "a_re_keyed_agent_gets_a_new_pair_key_the_old_keys_cannot_open",
                    "a_forgotten_agents_stored_keys_are_gone_after_a_restart",
                    "an_agent_whose_id_never_comes_back_is_marked_not_stored",
                    "a_stored_message_has_the_documented_header_and_signed_bytes[embedded]",
                    "a_stored_header_that_is_not_a_version_1_list_is_refused_as_malformed",
                )
            ),
            "tests/bus/test_peers_and_rejections.py",  # both backends: 28 tests, about 4 s
            "tests/bus/test_core.py::test_names_resolve_through_the_directory_and_cannot_be_rebound[redis]",
            *(
                f"tests/bus/test_core.py::test_{t}[embedded]"
                for t in (
                    "direct_in_order_exactly_once",
                    "store_and_backend_hold_only_ciphertext",
                    "no_agent_and_unknown_recipient_are_refused",
                    "pubsub_with_patterns_and_validation",
                    "buffer_overflow_errors_sender_and_keeps_accepted",
                    "ttl_expiry_removes_and_counts",
                    "policy_denies_and_audits",
                    "tampered_ciphertext_rejected",
                    "forged_signature_rejected",
                    "replayed_message_rejected",
                    "wrong_recipient_rejected",
                    "old_timestamp_rejected",
                    "forged_key_entry_rejected",
                    "names_resolve_through_the_directory_and_cannot_be_rebound",
                    "topic_delivery_copied_to_another_subscriber_rejected",
                    "each_subscriber_gets_its_own_binding_of_one_message",
                    "direct_request_and_reply_copies_rejected",
                )
            ),
            "tests/bus/test_core.py::test_replayed_message_rejected[redis]",
            "tests/bus/test_core.py::test_buffer_overflow_errors_sender_and_keeps_accepted[redis]",
            *(
                f"tests/bus/test_tools_and_stats.py::test_{t}"
                for t in (
                    "a_bus_tool_refuses_unknown_arguments_and_declares_its_hints",
                    "ttl_is_bounded_by_the_bus_max_age_and_at_least_a_millisecond",
                    "request_timeout_ms_must_be_a_positive_integer[embedded]",
                    "the_bus_tools_answer_with_their_documented_fields[embedded]",
                    "a_request_is_bounded_by_max_age_decided_on_the_peer_and_its_timeout_audited[embedded]",
                    "each_topic_has_its_own_key_derived_as_documented",
                )
            ),
            *(
                f"tests/bus/test_core_replies_and_topics.py::test_{t}[embedded]"
                for t in (
                    "the_send_tool_takes_its_ttl_and_answers_recipient_and_expiry",
                    "a_publish_is_audited_with_its_fields_chain_and_publisher",
                    "a_subscriber_with_a_full_buffer_is_refused_and_named_to_the_publisher",
                    "a_reply_lives_as_long_as_its_request_and_is_decided_and_audited",
                )
            ),
            "tests/bus/test_audit_and_retention.py::test_a_rejected_message_is_audited_with_its_metadata_and_the_receiving_agent[embedded]",
            "tests/bus/test_agent_keys_lifecycle.py::test_derived_topic_keys_are_a_bounded_cache",
        ),
        note=(
            "Scoped to the security-critical functions (Group.only): sealing/signing/encryption,"
            " the receive checks and the replay window, `symbi bus verify`, who may send (policy,"
            " rate limit), the quotas and the built-in's call. The delivery plumbing (fetch, settle,"
            " expiry sweeps, request/reply pumps, notifications, retirement, stats) is out of scope:"
            " covered by the bus tests, and a mutant there loses or delays messages, it does not let"
            " a forged, replayed or unauthorized one through."
        ),
        only=tuple(
            f"gateway.bus.{f}__mutmut_*"
            for f in (
                "crypto.xǁPublicKeysǁbody",
                "crypto.xǁKeyRingǁ_mac",
                "crypto.xǁKeyRingǁadmit",
                "crypto.xǁKeyRingǁentry_for",
                "crypto.xǁKeyRingǁensure",
                "crypto.xǁKeyRingǁpair_cipher",
                "crypto.xǁKeyRingǁtopic_cipher",
                "crypto.x_verify_signature",
                "crypto.x_config_secret",
                "crypto.x_load_secret",
                "sealing.xǁSealerǁbody",
                "sealing.xǁSealerǁseal",
                "sealing.xǁSealerǁseal_for",
                "sealing.x_ttl_ms_of",
                "message.x_header_bytes",
                "message.x_signed_bytes",
                "message.x_validate_topic",
                "message.xǁSecureMessageǁ__post_init__",
                "message.xǁSecureMessageǁsigned_bytes",
                "message.xǁSecureMessageǁfrom_fields",
                "receiving.xǁReceiverǁtake",
                "receiving.xǁReceiverǁsender_keys",
                "receiving.xǁReceiverǁ_check",
                "receiving.xǁReceiverǁ_open_message",
                "receiving.x__recipient_problem",
                "verify.*",
                "core.xǁBusǁ_me",
                "core.xǁBusǁ_peer",
                "core.xǁBusǁ_decide",
                "embedded.xǁEmbeddedBackendǁfirst_seen",
                "embedded.xǁEmbeddedBackendǁenqueue",
                "redis_backend.xǁRedisBackendǁfirst_seen",
                "redis_backend.xǁRedisBackendǁenqueue",
                "builtin.xǁBusBuiltinǁcall",
                "assemble.x_policy_authorizer",
            )
        ),
    ),
    # test_cli and test_sampling run `symbi` / a gateway over stdio (subprocesses: unattributable,
    # and the stdio client needs a real stderr, which mutmut's runs close)
    Group(
        "memory",
        ("gateway/memory/*",),
        tuple(
            f"tests/memory/test_{t}.py"
            for t in (
                "config",
                "embed",
                "gateway_memory",
                "knowledge",
                "manager",
                "store",
                "filters",
                "rag",
                "volatile",
                "knowledge_bases",
            )
        ),
    ),
    # the runtime's security core in-process: agent identity, the lifecycle's edges, breakers,
    # resource budgets, the scheduler's limits, the registry's per-principal admission and the
    # runtime's suspend/resume/terminate, with the unit tests only (the breaker's killed-upstream
    # test takes 30 s and the identity tests through a gateway 5-9 s a mutant: in the full group).
    # Out of scope (the full "runtime" group runs by name):
    # hosted runs (real bwrap/docker/gVisor per test, seconds a mutant; their sandbox limits are
    # in "sandbox-limits" and tests/runtime/test_hosted_limits.py), status and metrics (reports)
    Group(
        "runtime-security",
        ("gateway/runtime/*",),
        tuple(
            f"tests/runtime/test_{t}.py"
            for t in ("core", "breakers", "lifecycle", "resources", "scheduler", "registry")
        )
        + tuple(
            f"tests/runtime/test_breaker.py::{t}"
            for t in (
                "test_breaker_state_machine",
                "test_only_read_only_or_idempotent_tools_are_retried",
                "test_retry_with_backoff_only_when_a_repeat_is_harmless",
            )
        )
        + tuple(
            f"tests/runtime/test_identity.py::{t}"
            for t in (
                "test_same_session_same_agent_and_every_part_changes_the_id",
                "test_ids_are_not_reproducible_without_the_registry_key",
                "test_declared_client_name_is_only_a_prefixed_label",
                "test_registering_emits_one_state_event_and_runs_hooks",
                "test_principals_of_different_sources_never_share_an_agent",
                "test_a_2026_session_label_is_not_an_agent_identity",
                "test_session_agents_take_the_configured_default_priority",
                "test_an_agent_id_is_the_prefix_and_20_lowercase_base32_characters",
            )
        ),
        note="Out of scope: hosted runs (a real sandbox per test), status, metrics, as_json views.",
        only=(
            "gateway.runtime.identity.*",
            "gateway.runtime.lifecycle.*",
            "gateway.runtime.breaker.*",
            "gateway.runtime.resources.xǁResourcePoolǁ*",
            "gateway.runtime.resources.xǁ_Slotǁ*",
            "gateway.runtime.resources.xǁResourceLimitsǁfrom_config*",
            "gateway.runtime.scheduler.*",
            "gateway.runtime.agents.x_hosted_principal*",
            "gateway.runtime.agents.xǁAgentRegistryǁfor_session*",
            "gateway.runtime.agents.xǁAgentRegistryǁ_admit*",
            "gateway.runtime.agents.xǁAgentRegistryǁtransition*",
            "gateway.runtime.core.xǁAgentRuntimeǁbegin*",
            "gateway.runtime.core.xǁAgentRuntimeǁend*",
            "gateway.runtime.core.xǁAgentRuntimeǁsuspend*",
            "gateway.runtime.core.xǁAgentRuntimeǁresume*",
            "gateway.runtime.core.xǁAgentRuntimeǁterminate*",
            "gateway.runtime.core.xǁAgentRuntimeǁnote_error*",
        ),
    ),
    # who may read and write which memory: the access checks, the filters a caller passes (they
    # cannot name a system field), the store filters that keep agents apart, the collection's
    # embedder check, and what the memory/knowledge built-ins let a caller read and end; with the
    # in-process tests (test_gateway_memory starts a gateway per test, 5-8 s a mutant: in "memory").
    # Out of scope (the full "memory" group runs by name): embedding, chunking, RAG ranking,
    # the store's plumbing, statistics
    Group(
        "memory-security",
        ("gateway/memory/*",),
        tuple(
            f"tests/memory/test_{t}.py"
            for t in (
                "access",
                "builtin",
                "filters",
                "store",
                "volatile",
                "knowledge_bases",
                "manager",
            )
        ),
        note="Out of scope: embedding, chunking, RAG ranking, store plumbing, statistics.",
        only=(
            "gateway.memory.access.*",
            "gateway.memory.manager.x_namespace_of*",
            "gateway.memory.manager.x_check_name*",
            "gateway.memory.manager.x_user_filter*",
            "gateway.memory.manager.x_knowledge_filter*",
            "gateway.memory.store.x_check_metadata*",
            "gateway.memory.store.xǁEdgeStoreǁ_filter*",
            "gateway.memory.store.xǁQdrantClientStoreǁ_filter*",
            "gateway.memory.volatile.x__meta_ok*",
            "gateway.memory.volatile.xǁVolatileMemoryǁsearch*",
            "gateway.memory.builtin.xǁMemoryBuiltinǁcall*",
            "gateway.memory.builtin.xǁMemoryBuiltinǁ_end_task*",
            "gateway.memory.builtin.xǁMemoryBuiltinǁread_resource*",
            "gateway.memory.builtin.xǁKnowledgeBuiltinǁ_bases*",
        ),
    ),
    # the corpus and the verifier's screening tests call it in-process; tests/screen's gateway
    # and real-server tests start processes per test (seconds a mutant): not in the set
    Group(
        "screen",
        ("gateway/screen/*",),
        (
            "tests/screen/test_corpus.py",
            "tests/screen/test_screener.py",
            *(
                f"tests/verify/test_verifier.py::{t}"
                for t in (
                    "test_poisoned_definitions_are_screened_and_announced_once_per_definition",
                    "test_screening_on_approval_sees_other_upstreams_tools_only",
                    "test_screening_in_the_catalogue_mentions_accepted_findings_and_event_fields",
                )
            ),
        ),
    ),
)
BY_NAME = {g.name: g for g in GROUPS}
# `make mutate` with no GROUPS: every module issue 21 names (schemapin/_verify.py, gateway/verify/,
# gateway/policy/, gateway/steps/, the audit verifier and store, the server's auth, the sandbox
# tiers' limit and network settings) and the runtime parts as they join it: the bus's
# security-critical functions (bus: about 800 CPU-seconds, 7 min of idle wall), and the runtime's
# and memory's (runtime-security, memory-security: their fast in-process tests); its CPU-seconds
# are in the report's cost table. The whole runtime and memory groups, and screen, run by name.
DEFAULT = (
    "schemapin-verify",
    "steps",
    "audit-verify",
    "audit-store",
    "auth",
    "policy",
    "verify",
    "sandbox-limits",
    "bus",
    "runtime-security",
    "memory-security",
)


def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(group: Group, scratch: Path) -> None:
    """A scratch copy of the tracked tree (as in the working tree) with this group's config."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.split(
        b"\0"
    )
    for rel in (f.decode() for f in files if f):
        src = ROOT / rel
        if src.is_symlink() or not src.is_file():
            continue  # node_modules symlinks etc. are linked below, deleted files skipped
        dst = scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    (scratch / "mutants").mkdir()
    for name in LINKED:
        target = Path("/work/main") / name if not (ROOT / name).exists() else (ROOT / name).resolve()
        for where in (scratch, scratch / "mutants"):
            link = where / name
            if not link.exists():
                link.symlink_to(target)
    packages = sorted({m.split("/")[0] for m in group.mutate} | {"gateway", "schemapin"})
    pyproject = scratch / "pyproject.toml"
    text = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject.read_text())
    text += (
        "\n[tool.mutmut]\n"
        f"source_paths = {_toml_list(packages)}\n"  # whole packages, else imports break
        f"only_mutate = {_toml_list(group.mutate)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(group.tests)}\n"
        f"also_copy = {_toml_list(ALSO_COPY)}\n"
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly"]\n'
        + (f"timeout_multiplier = {group.timeout_multiplier}\n" if group.timeout_multiplier else "")
    )
    pyproject.write_text(text)


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def _tests_tmp(scratch: Path) -> Path | None:
    """The tests' TMPDIR (their tmp_path: audit logs, memory stores, key files) on tmpfs.

    The tests fsync (the audit store's synchronous=FULL, the memory store's flushes) and make
    and delete many files; on this machine's shared disk that made a mutant's run I/O-bound
    (the memory tests: 78-93 s wall on /tmp, 13-21 s on /dev/shm, for the same 9 CPU-seconds).
    What the tests check does not depend on the medium (the durability test counts the fsync
    calls with strace, which tmpfs receives too). SYMBI_MUTATE_TMP=DIR overrides, "" = the
    system's TMPDIR."""
    base = os.environ.get("SYMBI_MUTATE_TMP", "/dev/shm")
    if not base or not Path(base).is_dir():
        return None
    d = Path(base) / f"symbi-mutate-tmp-{os.getpid()}-{scratch.name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _proc_cpu(pid: int) -> float | None:
    """CPU-seconds of a running process and its reaped children so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _children_cpu() -> float:
    """User + system CPU-seconds of this process's reaped descendants (mutmut and its forks).
    Not counted: containers (run by dockerd, not our children) and forks a stopped run left."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


STOPPED = -9  # mutmut_exit of a run stopped by --timeout


def run_group(
    group: Group,
    scratch: Path,
    max_children: int,
    *,
    collect_only: bool = False,
    timeout_s: float | None = None,
    names: list[str] | None = None,
) -> dict[str, object]:
    seconds_file = scratch / "seconds"
    if not collect_only:
        prepare(group, scratch)
        commit = _head()  # the tree the run starts from (HEAD may move while it runs)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # import the mutants
        tests_tmp = _tests_tmp(scratch)
        if tests_tmp is not None:
            env["TMPDIR"] = str(tests_tmp)
        env.update(group.env)
        start = time.monotonic()
        cpu_before = _children_cpu()
        if names is not None:
            (scratch / "names").write_text("\n".join(names) + "\n")
        env["PYTHONUNBUFFERED"] = "1"  # its "Running mutation testing" line marks the end of set-up
        setup_cpu: float | None = None
        with (scratch / "mutmut.log").open("w") as out:
            # its own process group, so a run past --timeout is stopped whole (mutmut forks)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mutmut",
                    "run",
                    "--max-children",
                    str(max_children),
                    *(names if names is not None else group.only),
                ],
                cwd=scratch,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            seen, stopped = 0, False
            while proc.poll() is None:
                time.sleep(1)
                if setup_cpu is None:  # the stats and clean-test runs are done: mutmut's set-up cost
                    with (scratch / "mutmut.log").open("rb") as log:
                        log.seek(max(seen - 64, 0))
                        chunk = log.read()
                        seen += len(chunk)
                    if b"Running mutation testing" in chunk:
                        setup_cpu = _proc_cpu(proc.pid)
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    (scratch / "note").write_text(
                        f"stopped by --timeout after {timeout_s:g} s: the mutants it had not reached are 'not checked'"
                    )
                    stopped = True
                    break
            code = STOPPED if stopped else proc.wait()
        cpu = round(_children_cpu() - cpu_before)
        setup = -1 if setup_cpu is None else round(setup_cpu)
        seconds_file.write_text(f"{round(time.monotonic() - start)} {code} {commit} {cpu} {setup}")
        if tests_tmp is not None:
            shutil.rmtree(tests_tmp, ignore_errors=True)
    cpu_s: int | None = None
    setup_cpu_s: int | None = None
    if seconds_file.exists():
        seconds, exit_code, commit, *rest = seconds_file.read_text().split()
        cpu_s = int(rest[0]) if rest else None
        setup_cpu_s = int(rest[1]) if len(rest) > 1 and int(rest[1]) >= 0 else None
    else:  # the run was stopped: what it reached is in the .meta files, the rest is "not checked"
        seconds, exit_code, commit = "0", "-1", _head()
    mutants = collect(scratch)
    if group.only:
        mutants = [m for m in mutants if any(fnmatch.fnmatch(str(m["name"]), p) for p in group.only)]
    return {
        "mutate": list(group.mutate),
        "tests": list(group.tests),
        "seconds": int(seconds),
        # CPU-seconds (user + system) of mutmut and every test process it forked and reaped: on
        # a shared machine a better measure of the run's cost than wall time; cpu_s / 2 is the
        # wall time the run would take on this 2-core machine idle (2 children, CPU-bound)
        "cpu_s": cpu_s,
        "setup_cpu_s": setup_cpu_s,  # of cpu_s: mutmut's stats and clean-test runs before the mutants
        "mutmut_exit": int(exit_code),
        "commit": commit,  # of the tree the group ran on (plus uncommitted changes, if any)
        "mutants": mutants,
        # a run made otherwise than by this script (e.g. a re-check of named mutants) says so here
        "note": " ".join(
            n
            for n in (
                (scratch / "note").read_text().strip() if (scratch / "note").exists() else "",
                f"Only the mutants of {', '.join(group.only)}." if group.only else "",
                group.note,
            )
            if n
        ),
    }


STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    37: "caught by type check",
    None: "not checked",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
}


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n, path=f) for n, f in json.load(sys.stdin)}))
"""


def collect(scratch: Path) -> list[dict[str, object]]:
    """Every mutant with its status and, if it survived, its diff (one mutmut process)."""
    out: list[dict[str, object]] = []
    for meta in sorted((scratch / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(scratch / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out += [
            {"name": n, "file": source, "status": STATUS.get(c, "suspicious")}
            for n, c in sorted(codes.items())
        ]
    wanted = [[m["name"], m["file"]] for m in out if m["status"] not in ("killed", "no tests", "not checked")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        input=json.dumps(wanted),
        check=True,
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    )
    diffs = json.loads(shown.stdout)
    for m in out:
        if m["name"] in diffs:
            m["diff"] = diffs[m["name"]]
    return out


def merge_recheck(old: dict[str, Any], new: dict[str, Any], names: list[str], what: str) -> dict[str, Any]:
    """The group's earlier result with the named mutants' statuses from a by-name re-check
    (``--recheck``); a named mutant the re-check did not reach keeps its earlier status."""
    fresh = {
        str(m["name"]): m for m in new["mutants"] if m["name"] in set(names) and m["status"] != "not checked"
    }
    merged = [fresh.get(str(m["name"]), m) for m in old["mutants"]]
    before = score([m for m in old["mutants"] if m["name"] in fresh])
    after = score(list(fresh.values()))
    note = (
        f"Re-checked by name at {new['commit']} ({int(new['seconds']) // 60} min, tests: {' '.join(new['tests'])}):"
        f" {len(fresh)} of the {len(names)} mutants that were {what}, {before} -> {after}."
    )
    commit = f"{old['commit']}+{new['commit']}" if new["commit"] not in str(old["commit"]) else old["commit"]
    cpu = (
        None
        if old.get("cpu_s") is None or new.get("cpu_s") is None
        else int(old["cpu_s"]) + int(new["cpu_s"])
    )
    whole_cpu, how = group_cpu(old)
    return {
        **old,
        "whole_cpu_s": whole_cpu if how == "measured" else None,
        "tests": new["tests"],
        "seconds": int(old["seconds"]) + int(new["seconds"]),
        "mutants": merged,
        "cpu_s": cpu,
        "commit": commit,
        "note": " ".join(n for n in (str(old.get("note", "")), note) if n),
    }


def sample_cost(old: dict[str, Any], new: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A full run's CPU-seconds estimated from a run of some of the group's mutants by name:
    set-up (stats + clean tests) + CPU per mutant x the mutants that have tests."""
    ran = [
        m
        for m in new["mutants"]
        if m["name"] in set(names) and m["status"] not in ("not checked", "no tests")
    ]
    cpu, setup = new.get("cpu_s"), new.get("setup_cpu_s")
    tested = sum(1 for m in old["mutants"] if m["status"] != "no tests")
    per = (int(cpu) - int(setup)) / len(ran) if cpu is not None and setup is not None and ran else None
    return {
        "commit": new["commit"],
        "mutants_run": len(ran),
        "seconds": new["seconds"],
        "cpu_s": cpu,
        "setup_cpu_s": setup,
        "cpu_s_per_mutant": None if per is None else round(per, 2),
        "mutants_with_tests": tested,
        "estimate_cpu_s": None if per is None else round(int(setup or 0) + per * tested),
        "statuses": score(ran),
    }


def score(mutants: list[dict[str, object]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in mutants:
        counts[str(m["status"])] = counts.get(str(m["status"]), 0) + 1
    return counts


def _changed_lines(diff: str) -> str:
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)


def verdict(name: str, reasons: dict[str, dict[str, str]]) -> tuple[str, str]:
    """(kind, text) for a surviving mutant: killed_by, equivalent, gap or unexplained."""
    for kind in ("killed_by", "equivalent", "gap"):
        if name in reasons.get(kind, {}):
            return kind, reasons[kind][name]
    return "unexplained", ""


def _row(label: str, mutants: list[dict[str, Any]], reasons: dict[str, dict[str, str]], extra: str) -> str:
    c = score(mutants)
    k, s = c.get("killed", 0), c.get("survived", 0) + c.get("suspicious", 0)
    kinds = [
        verdict(str(m["name"]), reasons)[0] for m in mutants if m["status"] in ("survived", "suspicious")
    ]
    eq, added, gap = kinds.count("equivalent"), kinds.count("killed_by"), kinds.count("gap")
    raw = f"{100 * k / (k + s):.0f}%" if k + s else "-"
    # equivalents are not mutants a test could kill; tests added after the run count as kills
    adj = f"{100 * (k + added) / (k + s - eq):.0f}%" if k + s - eq else "-"
    return (
        f"| {label} | {len(mutants)} | {k} | {s} | {eq} | {added} | {gap} | {kinds.count('unexplained')} | "
        f"{c.get('no tests', 0)} | {c.get('timeout', 0)} | {c.get('not checked', 0)} | {raw} | {adj} |{extra}"
    )


def render(data: dict[str, dict[str, Any]]) -> str:
    reasons: dict[str, dict[str, str]] = (
        tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    )
    head = (
        "| module | mutants | killed | survived | equivalent | killed by a test added since | gap | "
        "unexplained | no tests | timeout | not checked | raw score | score |"
    )
    lines = [
        "# Mutation report",
        "",
        "Produced by `make mutate` (scripts/mutate.py, mutmut). raw score = killed / (killed + survived);",
        "score = (killed + killed by a test added since the run) / (killed + survived - equivalent).",
        'Survivors are accounted for in scripts/mutation-equivalents.toml. "no tests" = no test of the',
        "group's in-process set calls that function (reached only through a `symbi` subprocess, which",
        'mutmut cannot attribute, or not tested); they are in the JSON, not listed here. "not checked"',
        "= the run was stopped before it reached them (a partial run).",
        "",
        head + " group | minutes | commit |",
        "| --- " * 16 + "|",
    ]
    for name, g in data.items():
        files = sorted({str(m["file"]) for m in g["mutants"]})
        for f in files:
            ms = [m for m in g["mutants"] if m["file"] == f]
            lines.append(_row(f, ms, reasons, f" {name} | {int(g['seconds']) // 60} | {g['commit']} |"))
    lines += ["", "Not run yet: " + (", ".join(n for n in BY_NAME if n not in data) or "none"), ""]
    lines += cost_table(data)
    for name, g in data.items():
        surv = [m for m in g["mutants"] if m["status"] in ("survived", "suspicious")]
        lines += [f"## {name}: surviving mutants ({len(surv)})", "", f"Tests: {' '.join(g['tests'])}", ""]
        if g.get("note"):
            lines += [f"Note: {g['note']}", ""]
        for m in surv:
            kind, text = verdict(str(m["name"]), reasons)
            label = {
                "killed_by": f"killed by {text} (added after this run)",
                "equivalent": f"equivalent: {text}",
                "gap": f"GAP (not closed): {text}",
                "unexplained": "UNEXPLAINED",
            }[kind]
            lines += [
                f"- `{m['name']}` ({m['status']}): {label}",
                "",
                "```diff",
                _changed_lines(str(m.get("diff", ""))),
                "```",
                "",
            ]
    return "\n".join(lines) + "\n"


def group_cpu(g: dict[str, Any]) -> tuple[int | None, str]:
    """A full run's CPU-seconds for the group: measured (its last run was whole and timed) or
    estimated from a sampled run (--sample); None if neither."""
    c = score(g["mutants"])
    whole = (
        g.get("cpu_s") is not None and not c.get("not checked") and "Re-checked" not in str(g.get("note", ""))
    )
    if whole:
        return int(g["cpu_s"]), "measured"
    if g.get("whole_cpu_s") is not None:  # the last whole run's, kept through later re-checks
        return int(g["whole_cpu_s"]), "measured"
    est = (g.get("cost_sample") or {}).get("estimate_cpu_s")
    return (int(est), "estimated") if est is not None else (None, "")


def cost_table(data: dict[str, dict[str, Any]]) -> list[str]:
    """Per group: its runs' cost in CPU-seconds, measured or estimated from a sample, and the
    default run's total as CPU-seconds / 2 (its wall time on this 2-core machine when idle)."""
    lines = [
        "## Cost per group",
        "",
        "CPU-seconds (user + system) of mutmut and the test processes it forked, not counting the",
        "containers dockerd runs for the sandbox tiers. A full run's CPU-seconds are measured when the",
        "group's last run was whole, else estimated from `--sample N` (N random mutants by name): set-up",
        "(mutmut's stats and clean-test runs) + CPU per mutant x the mutants that have tests. idle wall =",
        "CPU-seconds / 2: the wall time on this 2-core machine with nothing else running (2 mutants at",
        "a time, CPU-bound). Wall minutes measured on the shared machine are longer and say little.",
        "",
        "| group | in default | mutants | with tests | last run: wall min | last run: cpu_s | sample: mutants "
        "| sample: set-up cpu_s | sample: cpu_s per mutant | full run cpu_s | idle wall min |",
        "| --- " * 11 + "|",
    ]
    for name, g in data.items():
        cpu, how = group_cpu(g)
        sample = g.get("cost_sample") or {}
        with_tests = sum(1 for m in g["mutants"] if m["status"] != "no tests")
        lines.append(
            f"| {name} | {'yes' if name in DEFAULT else 'no'} | {len(g['mutants'])} | {with_tests} | "
            f"{int(g['seconds']) // 60} | {g.get('cpu_s') if g.get('cpu_s') is not None else '-'} | "
            f"{sample.get('mutants_run', '-')} | {sample.get('setup_cpu_s', '-')} | "
            f"{sample.get('cpu_s_per_mutant', '-')} | {f'{cpu} ({how})' if cpu is not None else '-'} | "
            f"{f'{cpu / 120:.0f}' if cpu is not None else '-'} |"
        )
    return [*lines, "", default_cost(data), ""]


def default_cost(data: dict[str, dict[str, Any]]) -> str:
    """One line: the default run's CPU-seconds (measured or estimated per group) and idle wall."""
    parts, total = [], 0
    for name in DEFAULT:
        cpu, how = group_cpu(data[name]) if name in data else (None, "")
        if cpu is None:
            return f"Default `make mutate` ({', '.join(DEFAULT)}): not measured or estimated for {name} yet."
        total += cpu
        parts.append(f"{name} {cpu}{'' if how == 'measured' else ' est.'}")
    return (
        f"Default `make mutate`: {total} CPU-seconds ({', '.join(parts)}): {total / 120:.0f} min of wall"
        " time on this 2-core machine when idle if the runs were CPU-bound. That is a lower bound: the"
        " tests' waits (request timeouts, sleeps, container starts) and the containers' own CPU (run by"
        " dockerd, not counted) add to it: the policy group's cache-defeating mutants wait for their"
        " timeouts, sandbox-limits for its containers. The README's Mutation score section gives the"
        " last run of the whole default timed end to end."
    )


README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- mutation-table: scripts/mutate.py --readme -->", "<!-- /mutation-table -->"


def readme_table(data: dict[str, dict[str, Any]]) -> str:
    """The README's per-module table (between its markers), from the same JSON as the report."""
    reasons: dict[str, dict[str, str]] = (
        tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    )
    lines = [
        "| module | group (minutes) | mutants | killed | survived: equivalent / gap / unexplained "
        "| no tests | timeout | not checked | score | raw | run on |",
        "| --- " * 11 + "|",
    ]
    for name, g in data.items():
        for f in sorted({str(m["file"]) for m in g["mutants"]}):
            ms = [m for m in g["mutants"] if m["file"] == f]
            c = score(ms)
            k, s = c.get("killed", 0), c.get("survived", 0) + c.get("suspicious", 0)
            kinds = [
                verdict(str(m["name"]), reasons)[0] for m in ms if m["status"] in ("survived", "suspicious")
            ]
            eq, added, gap = kinds.count("equivalent"), kinds.count("killed_by"), kinds.count("gap")
            more = f" (+{added} killed by tests added since)" if added else ""
            raw = f"{100 * k / (k + s):.0f}%" if k + s else "-"
            adj = f"{100 * (k + added) / (k + s - eq):.0f}%" if k + s - eq else "-"
            lines.append(
                f"| {f} | {name} ({int(g['seconds']) // 60}) | {len(ms)} | {k} | {s}: {eq} / {gap} / "
                f"{kinds.count('unexplained')}{more} | {c.get('no tests', 0)} | {c.get('timeout', 0)} | "
                f"{c.get('not checked', 0)} | {adj} | {raw} | {g['commit']} |"
            )
    missing = [n for n in BY_NAME if n not in data]
    lines += ["", "Not run yet: " + (", ".join(missing) or "none"), "", default_cost(data)]
    return "\n".join(lines)


def update_readme(data: dict[str, dict[str, Any]]) -> None:
    text = README.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    README.write_text(text[:start] + "\n" + readme_table(data) + "\n" + text[end:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("groups", nargs="*", help=f"group names (default: {' '.join(DEFAULT)})")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render reports/mutation.md")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's per-module table")
    ap.add_argument(
        "--collect", action="store_true", help="re-read the groups' last scratch runs, do not run"
    )
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutant runs (2 cores here)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop a group's run after this many seconds (partial report)",
    )
    ap.add_argument(
        "--recheck",
        metavar="STATUS",
        action="append",
        default=None,
        help="run only the group's mutants that had this status in the report (e.g. survived, 'not checked'),"
        " by name, and merge their new statuses into the group's result (repeatable)",
    )
    ap.add_argument(
        "--sample",
        type=int,
        metavar="N",
        default=None,
        help="measure the group's cost only: run N of its mutants (random, seeded) by name and record"
        " CPU-seconds of set-up and per mutant, and the estimate for a full run (statuses untouched)",
    )
    ap.add_argument("--scratch", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "symbi-mutate")
    args = ap.parse_args()
    if args.list:
        for g in GROUPS:
            print(f"{g.name}: {' '.join(g.mutate)}  <- {' '.join(g.tests)}")
        return 0
    unknown = [n for n in args.groups if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; see --list")
    data: dict[str, dict[str, Any]] = json.loads(REPORT_JSON.read_text()) if REPORT_JSON.exists() else {}
    if not args.render:
        for name in args.groups or list(DEFAULT):
            print(f"[mutate] {name} ...", flush=True)
            names = None
            if args.sample is not None:
                if name not in data:
                    ap.error(f"--sample: group {name} has no result in {REPORT_JSON.name} yet")
                tested = sorted(str(m["name"]) for m in data[name]["mutants"] if m["status"] != "no tests")
                names = random.Random(0).sample(tested, min(args.sample, len(tested)))
            elif args.recheck:
                if name not in data:
                    ap.error(f"--recheck: group {name} has no result in {REPORT_JSON.name} yet")
                names = [str(m["name"]) for m in data[name]["mutants"] if m["status"] in args.recheck]
                if not names:
                    print(f"[mutate] {name}: no mutant is {' or '.join(args.recheck)}", flush=True)
                    continue
            result: dict[str, Any] = run_group(
                BY_NAME[name],
                args.scratch / name,
                args.max_children,
                collect_only=args.collect,
                timeout_s=args.timeout,
                names=names,
            )
            print(
                f"[mutate] {name}: {score(result['mutants'])} in {result['seconds']} s"
                f" ({result['cpu_s']} CPU-s)",
                flush=True,
            )
            # read again: another group's run (another process) may have written its result since
            data = json.loads(REPORT_JSON.read_text()) if REPORT_JSON.exists() else {}
            if args.sample is not None and names is not None:
                if result.get("setup_cpu_s") is None:  # mutmut never reached the mutants
                    print(f"[mutate] {name}: sample not run, see {args.scratch / name / 'mutmut.log'}")
                    continue
                data[name]["cost_sample"] = sample_cost(data[name], result, names)
                print(f"[mutate] {name}: {data[name]['cost_sample']}", flush=True)
                REPORT_JSON.write_text(json.dumps(data, indent=1) + "\n")
                continue
            if names is not None:
                if all(m["status"] == "not checked" for m in result["mutants"] if m["name"] in set(names)):
                    # nothing re-checked (mutmut stopped at its clean run, or at once): keep the result
                    print(f"[mutate] {name}: nothing re-checked, see {args.scratch / name / 'mutmut.log'}")
                    continue
                result = merge_recheck(data[name], result, names, " or ".join(args.recheck))
            data[name] = result
            REPORT_JSON.parent.mkdir(exist_ok=True)
            REPORT_JSON.write_text(json.dumps(data, indent=1) + "\n")
    ordered = {n: data[n] for n in BY_NAME if n in data}
    REPORT_MD.write_text(render(ordered))
    if args.readme:
        update_readme(ordered)
    print(f"[mutate] report: {REPORT_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
