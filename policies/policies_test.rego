# The policy's own tests, run like `opa test`: every test_* rule must be true.
# `symbi policy check` runs them, and a hot reload is refused when one fails.
package symbi_test

import rego.v1

# The tests carry their own data, so they hold whatever data file the policy is run with.
fixture := {
 "principals": {
  "stdio": {
   "local": {"roles": ["developer"], "rate_limit": 120, "max_calls_per_hour": 5000}
  },
  "keys": {
   "admin": {"roles": ["admin"]},
   "alice": {"roles": ["developer", "trusted"]},
   "ci-bot": {"roles": [], "tools": ["time__*"], "rate_limit": 10, "max_calls_per_hour": 100},
   "auditor": {"roles": ["readonly"], "deny_tools": ["fs__read_media_file"]}
  },
  "jwt": {"https://login.example.com/": {"ops": {"roles": ["admin"]}}}
 },
 "roles": {
  "admin": {
   "tools": [
    "*"
   ],
   "resources": [
    "*"
   ],
   "prompts": [
    "*"
   ],
   "log_levels": [
    "*"
   ]
  },
  "developer": {
   "tools": [
    "time__*",
    "everything__echo",
    "everything__add",
    "everything__get*",
    "everything__printEnv",
    "fs__read_*",
    "fs__list_*",
    "fs__search_files",
    "fs__get_file_info",
    "fs__directory_tree",
    "fs__write_file",
    "fs__fetch_url",
    "sandbox__run_python",
    "sandbox__run_shell"
   ],
   "deny_tools": [
    "*__delete*"
   ],
   "resources": [
    "*"
   ],
   "prompts": [
    "*"
   ]
  },
  "readonly": {
   "tools": [
    "time__*",
    "fs__read_*",
    "fs__list_*",
    "fs__get_file_info"
   ]
  },
  "trusted": {}
 },
 "upstreams": {
  "everything": {
   "allow_unverified": true
  },
  "fs": {
   "allow_unverified": true
  },
  "time": {
   "allow_unverified": true
  },
  "sandbox": {
   "allow_unverified": true
  }
 },
 "fs_roots": [
  "/srv/symbi",
  "/tmp/symbi",
  "data"
 ],
 "path_arguments": [
  "path",
  "paths",
  "source",
  "destination"
 ],
 "url_arguments": [
  "url",
  "uri",
  "endpoint"
 ],
 "url_hosts": [
  "localhost",
  "127.0.0.1",
  "example.com",
  "*.example.com"
 ],
 "default_rate_limit": 60,
 "default_max_calls_per_hour": 0,
 "tool_rate_limits": {
  "sandbox__*": 10,
  "everything__printEnv": 5
 },
 "max_result_bytes": {
  "*": 1048576,
  "sandbox__*": 65536
 },
 "redact_arguments": {
  "*": [
   "api_key",
   "password",
   "token"
  ],
  "everything__*": [
   "/headers/authorization"
  ]
 },
 "redact_result": {
  "everything__printEnv": [
   "AWS_SECRET_ACCESS_KEY",
   "OPENAI_API_KEY"
  ]
 },
 "audit_minimal": [
  "time__*"
 ]
}

base := {
	"action": "call",
	"kind": "tools/call",
	"target": "time__get_current_time",
	"principal": {"id": "local", "kind": "user", "roles": ["developer"], "claims": {}, "source": "stdio"},
	"agent": null,
	"upstream": {"name": "time", "domain": null, "transport": "stdio"},
	"tool": {
		"name": "time__get_current_time", "original_name": "get_current_time", "upstream": "time",
		"annotations": {}, "verification": "pinned", "key_fingerprint": null, "code_tool": false,
	},
	"arguments": {},
	"context": {"time": "2026-11-26T10:00:00Z", "unix": 0, "session_id": null, "calls_last_minute": 0, "calls_last_hour": 0},
}

fs_call(tool, args) := object.union(base, {
	"target": tool,
	"upstream": {"name": "fs", "domain": null, "transport": "stdio"},
	"tool": object.union(base.tool, {"name": tool, "upstream": "fs", "verification": "unverified"}),
	"arguments": args,
})

test_allowed_tool if {
	d := data.symbi.decision with input as base with data.symbi_data as fixture
	d.allow == true
	d.reasons == []
}

test_default_deny_for_unknown_principal if {
	d := data.symbi.decision with input as object.union(base, {"principal": {"id": "stranger", "roles": []}}) with data.symbi_data as fixture
	d.allow == false
	count(d.reasons) == 1
}

test_every_deny_has_a_reason if {
	d := data.symbi.decision with input as object.union(base, {"kind": "nothing/known"}) with data.symbi_data as fixture
	d.allow == false
	count(d.reasons) > 0
}

test_path_traversal_denied if {
	d := data.symbi.decision with input as fs_call("fs__read_text_file", {"path": "/srv/symbi/../../etc/passwd"}) with data.symbi_data as fixture
	d.allow == false
}

test_path_under_root_allowed if {
	d := data.symbi.decision with input as fs_call("fs__read_text_file", {"path": "/srv/symbi/a/b.txt"}) with data.symbi_data as fixture
	d.allow == true
}

# a 2026 client's answer reaches the upstream with the call: its path field is checked as the
# argument of that name is (a declined answer carries nothing to check)
test_path_in_an_answer_denied if {
	answers := {"q1": {"action": "accept", "content": {"path": "/etc/passwd"}}, "q2": {"action": "decline"}}
	call := object.union(fs_call("fs__read_text_file", {"path": "/srv/symbi/a/b.txt"}), {"input_responses": answers})
	d := data.symbi.decision with input as call with data.symbi_data as fixture
	d.allow == false
	d.reasons == ["answer q1: argument path is not a path under an allowed root"]
	ok := object.union(call, {"input_responses": {"q1": {"action": "accept", "content": {"path": "/srv/symbi/c"}}}})
	e := data.symbi.decision with input as ok with data.symbi_data as fixture
	e.allow == true
}

# an argument document that is not an object is refused, not let past the argument checks
test_arguments_not_an_object_denied if {
	d := data.symbi.decision with input as fs_call("fs__read_text_file", [{"path": "/etc/passwd"}]) with data.symbi_data as fixture
	d.allow == false
	d.reasons == ["arguments of tool fs__read_text_file are not an object"]
	s := data.symbi.decision with input as object.union(base, {"arguments": "/etc/passwd"}) with data.symbi_data as fixture
	s.reasons == ["arguments of tool time__get_current_time are not an object"]
}

test_url_userinfo_trick_denied if {
	d := data.symbi.decision with input as fs_call("fs__fetch_url", {"url": "https://example.com@evil.example.net/"}) with data.symbi_data as fixture
	d.allow == false
}

test_code_tool_requires_gvisor if {
	inp := object.union(base, {
		"upstream": {"name": "sandbox"},
		"tool": object.union(base.tool, {"name": "sandbox__run_python", "upstream": "sandbox", "code_tool": true}),
	})
	d := data.symbi.decision with input as inp with data.symbi_data as fixture
	d.conditions.sandbox_tier == "gvisor"
}

test_revoked_tool_denied if {
	d := data.symbi.decision with input as object.union(base, {"tool": object.union(base.tool, {"verification": "revoked"})}) with data.symbi_data as fixture
	d.allow == false
}

test_denied_decision_has_no_conditions if {
	d := data.symbi.decision with input as object.union(base, {"principal": {"id": "stranger", "roles": []}}) with data.symbi_data as fixture
	d.conditions == {}
}

test_rate_limit_condition_present if {
	d := data.symbi.decision with input as base with data.symbi_data as fixture
	d.conditions.rate_limit > 0
}

set_level(who, source, roles, upstream) := object.union(base, {
	"kind": "logging/setLevel", "target": upstream, "tool": null,
	"principal": {"id": who, "kind": "user", "roles": roles, "claims": {}, "source": source},
	"upstream": {"name": upstream, "domain": null, "transport": "stdio"},
})

test_admin_may_set_an_upstream_log_level if {
	d := data.symbi.decision with input as set_level("admin", "key", [], "everything") with data.symbi_data as fixture
	d.allow == true
}

test_a_developer_may_not_change_a_shared_upstream_log_level if {
	d := data.symbi.decision with input as set_level("local", "stdio", ["developer"], "everything") with data.symbi_data as fixture
	d.allow == false
	d.reasons == ["principal local may not set the log level of upstream everything"]
}

jwt_principal(sub, issuer) := {"id": sub, "kind": "user", "roles": [], "claims": {"sub": sub}, "source": "jwt", "issuer": issuer}

test_jwt_sub_admin_is_not_the_api_key_admin if {
	d := data.symbi.decision with input as object.union(base, {"principal": jwt_principal("admin", "https://login.example.com/")}) with data.symbi_data as fixture
	d.allow == false
}

test_jwt_entries_are_per_issuer if {
	ok := data.symbi.decision with input as object.union(base, {"principal": jwt_principal("ops", "https://login.example.com/")}) with data.symbi_data as fixture
	ok.allow == true
	other := data.symbi.decision with input as object.union(base, {"principal": jwt_principal("ops", "https://evil.example/")}) with data.symbi_data as fixture
	other.allow == false
}

test_api_key_admin_is_admin if {
	d := data.symbi.decision with input as object.union(base, {"principal": {"id": "admin", "roles": [], "source": "key"}}) with data.symbi_data as fixture
	d.allow == true
}

# An upstream's own request to the calling client (kind "server_request"): the fixture has no
# server_requests, so every server may send the three methods, sampling up to 8192 tokens.
server_request(method, server, request) := object.union(base, {
	"kind": "server_request", "target": method, "method": method, "server": server,
	"tool": null, "upstream": {"name": server}, "request": request,
})

test_server_requests_default_to_the_three_methods_and_a_token_bound if {
	roots := data.symbi.decision with input as server_request("roots/list", "fs", {}) with data.symbi_data as fixture
	roots.allow == true
	small := data.symbi.decision with input as server_request("sampling/createMessage", "fs", {"maxTokens": 100}) with data.symbi_data as fixture
	small.allow == true
	large := data.symbi.decision with input as server_request("sampling/createMessage", "fs", {"maxTokens": 8193}) with data.symbi_data as fixture
	large.allow == false
}

test_an_upstream_may_be_kept_from_sampling if {
	data_no_sampling := object.union(fixture, {"upstreams": {"fs": {"server_requests": ["roots/list"]}}})
	d := data.symbi.decision with input as server_request("sampling/createMessage", "fs", {"maxTokens": 10}) with data.symbi_data as data_no_sampling
	d.allow == false
	d.reasons == ["upstream fs may not send sampling/createMessage to clients (server_requests)"]
	other := data.symbi.decision with input as server_request("sampling/createMessage", "time", {"maxTokens": 10}) with data.symbi_data as data_no_sampling
	other.allow == true
}

test_a_token_bound_that_is_not_a_number_denies_sampling if {
	# OPA orders every string above every number: "8192" as the bound allowed any request
	odd := object.union(fixture, {"upstreams": {"fs": {"max_sampling_tokens": "8192"}}})
	d := data.symbi.decision with input as server_request("sampling/createMessage", "fs", {"maxTokens": 1000000}) with data.symbi_data as odd
	d.allow == false
}
