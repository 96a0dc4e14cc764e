"""The mutation groups of scripts/mutate.py: per group, the files mutmut mutates and the
in-process tests that cover them (see mutate.py's docstring), here those of the gateway's call
path, audit, auth, verification and sandbox; the agents' (runtime, bus, memory) and the
screen's are in _mutate_groups_agents. The default run's groups."""

from __future__ import annotations

from _mutate_base import Group
from _mutate_groups_agents import AGENT_GROUPS

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
        ("gateway/audit/verify.py", "gateway/audit/verify_split.py"),
        (
            "tests/audit/test_verify.py",
            "tests/audit/test_verify_paths.py",
            "tests/audit/test_verify_walk.py",
            "tests/audit/test_verify_split.py",
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
        # the key cache decides whether a key is read from PostgreSQL or admitted from memory
        ("gateway/server/auth.py", "gateway/apikeys.py", "gateway/state/keycache.py"),
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
        + ("tests/server/http/test_auth_jwks.py",)
        # the cache's invalidation, fail-closed loss (killed, silent, dropped), the listener's
        # heartbeat and stop, the cached path's checks and routing (real PostgreSQL)
        + ("tests/state/test_key_cache.py", "tests/state/test_key_listener.py"),
    ),
    Group(
        "policy",
        (
            "gateway/policy/engine.py",
            "gateway/policy/inputdoc.py",
            "gateway/policy/redact.py",
            # what keeps text regorus would crash on (a lone surrogate) out of every policy input
            "gateway/textcheck.py",
        ),
        (
            "tests/test_textcheck.py",
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
    # the policy's hot reload: the file watcher (its polls, the settle wait, a changed file set)
    # and the files it watches (PolicyFiles: the *_test.rego beside the policy found again each
    # poll); its tests run a real watcher thread on copies of the repo policy
    Group(
        "policy-watch",
        ("gateway/policy/watch.py", "gateway/policy/loader.py"),
        ("tests/policy/test_watch.py", "tests/policy/test_reload_custody.py", "tests/policy/test_loader.py"),
        note="Of gateway/policy/loader.py only PolicyFiles, discover_files and _find_tests (what is watched).",
        only=(
            "gateway.policy.watch.*",
            "gateway.policy.loader.xǁPolicyFilesǁ*__mutmut_*",
            "gateway.policy.loader.x_discover_files__mutmut_*",
            "gateway.policy.loader.x__find_tests__mutmut_*",
        ),
    ),
    # an upstream's message whose text is not valid UTF-8 (the SDK's parsers refuse it): what it
    # was and the answer it is due, the HTTP transport that reads the SDK's parse failures again
    # and the stdio reader's answer to them (_unreadable; the rest of stdio.py is out of scope);
    # tests/upstream/test_upstream_text.py and test_stdio_text.py attack the same through gateways
    # (subprocesses: unattributable), test_httpclient and test_stdio_unreadable run the transports
    # in-process against the same real peer
    Group(
        "upstream-text",
        ("gateway/upstream/unreadable.py", "gateway/compat/httpclient.py", "gateway/upstream/stdio.py"),
        (
            "tests/upstream/test_unreadable.py",
            "tests/compat/test_httpclient.py",
            "tests/upstream/test_stdio_unreadable.py",
        ),
        note="Of gateway/upstream/stdio.py only _unreadable (the reader's answer to a line the SDK could not parse).",
        only=(
            "gateway.upstream.unreadable.*",
            "gateway.compat.httpclient.*",
            "gateway.upstream.stdio.x__unreadable__mutmut_*",
        ),
    ),
    # the admin API's request validation: the audit query's filters (into SQL), the recent lists'
    # limit, an agent action's reason (into the agent's state and the audit record); the handlers
    # are thin and tests/server/http/test_admin.py checks them on a running gateway (one per module,
    # with a stdio upstream: seconds a mutant), so only these functions, with their unit tests
    Group(
        "admin-input",
        ("gateway/server/admin.py",),
        ("tests/server/test_admin_input.py",),
        note="Out of scope: the handlers and row builders (tests/server/http/test_admin.py, a gateway per module).",
        only=tuple(
            f"gateway.server.admin.{f}__mutmut_*" for f in ("x_audit_filters", "x__limit", "x__reason")
        ),
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
    # lost, Docker failures as the error family (real containers, ~20 s a mutant; the default 15x
    # timeout: at 4x the session's tier probes alone outran a short test's limit). The pool's close
    # is not here: its mutants that keep a refill or a call alive wait out close's bounds (180 s,
    # the time limit + 60 s) per test, minutes each (a first run: 3 pool mutants in 12 min);
    # tests/sandbox/test_pool_close.py covers it in the ordinary suite
    Group(
        "sandbox-cleanup",
        ("gateway/sandbox/docker_api.py",),
        ("tests/sandbox/test_docker_api.py",),
        note="Out of scope: the pool's close (tests/sandbox/test_pool_close.py, too slow per mutant), runsc state.",
        only=tuple(
            f"gateway.sandbox.docker_api.{f}__mutmut_*"
            for f in (
                "x__transient",
                "x_backoff",
                "x_remove_container",
                "x_answer_lost",
                "x_reclaim",
                "x_sandbox_failure",
                "x_docker_errors",
            )
        )
        + ("gateway.sandbox.docker_api.xǁReclaimsǁ*__mutmut_*",),  # a lost create's look, off the call's path
        env=(("SYMBI_SANDBOX_REQUIRED", "1"), ("SYMBI_SANDBOX_NO_SETUP", "1")),
    ),
    *AGENT_GROUPS,
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
    "upstream-text",
    "auth",
    "policy",
    "policy-watch",
    "verify",
    "sandbox-limits",
    "bus",
    "runtime-security",
    "memory-security",
)
