# The policy's own tests, run like `opa test`: every test_* rule must be true.
# `symbi policy check` runs them, and a hot reload is refused when one fails.
package symbi_test

import rego.v1

base := {
	"action": "call",
	"kind": "tools/call",
	"target": "time__get_current_time",
	"principal": {"id": "local", "kind": "user", "roles": ["developer"], "claims": {}},
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
	d := data.symbi.decision with input as base
	d.allow == true
	d.reasons == []
}

test_default_deny_for_unknown_principal if {
	d := data.symbi.decision with input as object.union(base, {"principal": {"id": "stranger", "roles": []}})
	d.allow == false
	count(d.reasons) == 1
}

test_every_deny_has_a_reason if {
	d := data.symbi.decision with input as object.union(base, {"kind": "nothing/known"})
	d.allow == false
	count(d.reasons) > 0
}

test_path_traversal_denied if {
	d := data.symbi.decision with input as fs_call("fs__read_text_file", {"path": "/srv/symbi/../../etc/passwd"})
	d.allow == false
}

test_path_under_root_allowed if {
	d := data.symbi.decision with input as fs_call("fs__read_text_file", {"path": "/srv/symbi/a/b.txt"})
	d.allow == true
}

test_url_userinfo_trick_denied if {
	d := data.symbi.decision with input as fs_call("fs__fetch_url", {"url": "https://example.com@evil.example.net/"})
	d.allow == false
}

test_code_tool_requires_gvisor if {
	inp := object.union(base, {
		"upstream": {"name": "sandbox"},
		"tool": object.union(base.tool, {"name": "sandbox__run_python", "upstream": "sandbox", "code_tool": true}),
	})
	d := data.symbi.decision with input as inp
	d.conditions.sandbox_tier == "gvisor"
}

test_revoked_tool_denied if {
	d := data.symbi.decision with input as object.union(base, {"tool": object.union(base.tool, {"verification": "revoked"})})
	d.allow == false
}

test_denied_decision_has_no_conditions if {
	d := data.symbi.decision with input as object.union(base, {"principal": {"id": "stranger", "roles": []}})
	d.conditions == {}
}

test_rate_limit_condition_present if {
	d := data.symbi.decision with input as base
	d.conditions.rate_limit > 0
}
