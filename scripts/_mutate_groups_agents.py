"""The mutation groups of the agents' runtime, bus and memory and the screen (see
scripts/mutate.py): the tail of _mutate_groups.GROUPS, in this order."""

from __future__ import annotations

from _mutate_base import Group

AGENT_GROUPS: tuple[Group, ...] = (
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
    # backend's own code is in scope (its delivery script's buffer and byte bounds, its replay records): each
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
            "tests/bus/test_redis_counts.py",  # the caps across two processes on one redis-server
            "tests/bus/test_receiving.py",  # a topic no longer granted: held back, not lost
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
            # a stored header whose text is not valid UTF-8 (from_fields' check): refused as malformed
            *(
                f"tests/bus/test_core.py::test_a_stored_message_whose_header_is_not_utf8_is_rejected[embedded-{f}]"
                for f in ("sender", "topic", "reply_to")
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
                "receiving.xǁReceiverǁ_settle",
                "receiving.xǁReceiverǁ_checked",
                "receiving.xǁReceiverǁsender_keys",
                "receiving.xǁReceiverǁ_check",
                "receiving.xǁReceiverǁ_open_message",
                "receiving.x__recipient_problem",
                "verify.*",
                "membership.xǁMembershipǁ_me",
                "membership.xǁMembershipǁ_peer",
                "core.xǁBusǁ_decide",
                "embedded.xǁEmbeddedBackendǁfirst_seen",
                "embedded.xǁEmbeddedBackendǁenqueue",
                "redis_backend.xǁRedisBackendǁfirst_seen",
                "redis_counts.xǁRedisCountsǁdeliver",
                "redis_counts.xǁRedisCountsǁpublication",
                "redis_counts.xǁRedisCountsǁsubscribe",
                "counts.xǁLocalCountsǁdeliver",
                "counts.xǁLocalCountsǁpublication",
                "counts.xǁLocalCountsǁsubscribe",
                "receiving.x_grants",
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
