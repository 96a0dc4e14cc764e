# Symbi default policy: one decision per request, deny by default.
#
# Query: data.symbi.decision  ->  {"allow": bool, "reasons": [string], "conditions": {...}}
# Input: see gateway/policy/README.md (principal, agent, upstream, tool, arguments, context,
#        action = "call" | "list", kind = "tools/call" | "resources/read" | "prompts/get"
#        | "bus/send" | "bus/publish" | "bus/subscribe" with input.recipient / input.topic)
#        | "logging/setLevel" (target = the upstream's name)
#        | "server_request" (an upstream's own request to the calling client: input.method,
#          input.server, input.request = its params, input.caused_by = the call in flight).
# Data:  policies/data.json, loaded at the data root (data.symbi_data), the way
#        `opa run policies.rego policies/data.json` loads it.
#
# Portable on purpose: it runs unchanged on the embedded engine (regorus) and on a real OPA
# server. Only builtins both implement: glob.match, regex.match/find_all_string_submatch_n,
# sprintf %v/%d, split/startswith/contains/lower/concat, strings.any_prefix_match,
# sort/min/count, object.get, array.concat.
#
# Written for the interpreter's speed (regorus costs ~3 us per rule and ~1 us per builtin or
# function call): a well-formed request of the frequent kinds (tools, bus, memory) is decided
# from one rule body (facts), the data's patterns, roots and hosts are indexed once per load
# (data_index, below) so a decision globs only the few patterns that can match, and the other
# kinds evaluate only their own rules. A tool call finds its lists and conditions by the part
# of its name before "__" (calls_index), with the conditions every name of that part gets
# merged at load. The index holds no principals: checking that it is the one of the data in
# force costs the same with 5 principals or 5,000.

package symbi

import rego.v1

default cfg := {}

cfg := data.symbi_data

# ---------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------

# A well-formed request of the frequent kinds (a tools/call or a tool listing, the bus,
# memory) is decided from facts computed in one rule body (facts, below); anything else
# (other kinds, missing or odd fields) by the general rules. Both give the same decision
# (tests/policy/test_index_parity.py checks them against the previous policies and OPA).
decision := {"allow": true, "reasons": [], "conditions": f.conditions} if {
	f := facts
	f.granted
	deny == set()
} else := {"allow": false, "reasons": sort(deny), "conditions": {}} if {
	facts
	deny != set()
} else := {"allow": allow, "reasons": reasons, "conditions": granted_conditions}

# Deny by default: allow needs a positive grant AND no deny reason. A malformed input
# (missing tool name, unknown kind) leaves target_permitted undefined, so it is denied.
default allow := false

allow if {
	count(deny) == 0
	target_permitted
}

reasons := sort(deny) if count(deny) > 0
else := [] if allow
else := [sprintf("no rule allows %v on %v (default deny)", [kind, target_name])]

granted_conditions := conditions if allow
else := {}

# each kind evaluates only its own rules (conditions are granted to tools, prompts, the bus and memory)
conditions := tool_conditions if is_tool
else := other_conditions

# Every reason to refuse. A well-formed tool call (the hot path) has its reasons computed in
# one rule (facts: regorus costs ~3 us per rule and ~1 us per builtin or function call);
# anything else (other kinds, missing or odd fields) by the general rules. Both give the same
# reasons (tests/policy/test_index_parity.py). A rule added here (`deny contains msg if ...`)
# joins them on every path. (The two rules read facts directly: a rule in between, chosen by
# an else, cost every decision an evaluation of its own.)
deny contains msg if some msg in facts.refusals

# A 2026 client's answers (input_responses) reach the upstream with the call, as its
# arguments do: a field of an answer named as a path or URL argument gets that argument's
# checks (answer_refusals; facts checks them on its paths). The kinds a client answers for
# (and logging/setLevel, decided with resources and prompts), as facts has them.
answer_deny := answer_refusals(input.input_responses, idx) if {
	input.input_responses
	kind in {"tools/call", "resources/read", "prompts/get", "logging/setLevel"}
} else := set()

deny contains msg if {
	not facts
	some msg in (kind_deny | volume_deny) | answer_deny
}

kind_deny := tool_deny if is_tool
else := bus_deny if is_bus
else := memory_deny if kind in {"context/read", "context/write", "knowledge/search"}
else := access_deny

target_permitted if {
	is_tool
	tool_allowed
}

target_permitted if {
	not is_tool
	other_permitted
}

# the grants of the other kinds (each clause is guarded by its kind)
other_permitted := true if {
	kind == "resources/read"
	resource_ok
} else := true if {
	kind == "prompts/get"
	prompt_ok
} else := true if {
	# logging/setLevel changes a shared upstream's log level for every caller (target = the
	# upstream's name): only principals granted that upstream under `log_levels` may.
	kind == "logging/setLevel"
	log_level_ok
} else := true if {
	kind == "bus/send"
	bus_peer_ok
} else := true if {
	topic_granted(bus_kind_field[kind])
} else := true if {
	is_memory_kind
	own_memory
} else := true if {
	is_memory_kind
	has_agent
	namespace_granted
} else := true if {
	kind == "knowledge/search"
	has_agent
	knowledge_granted
} else := true if {
	# an upstream's own request to the calling client: allowed unless server_request_deny
	# refuses it (the method, the size of a sampling request)
	kind == "server_request"
	is_string(input.server)
	is_string(input.method)
} else := true if {
	# knowledge/ingest: asked by `symbi knowledge add` (the operator, who owns the config and
	# the data dir; no agent asks it) for the patterns to redact from files before they are
	# embedded.
	kind == "knowledge/ingest"
}

# {"refusals", "granted", "conditions"} of a well-formed request of a frequent kind, with the
# principal, its roles and the matches in locals: undefined for any other input (the general
# rules decide those). First a tools/call (the same rules as tool_deny, volume_deny and
# tool_conditions below), then the bus, memory and knowledge search, and resources, prompts
# and log levels. A value indexed where it is written (`{...}[k]`, `split(...)[0]`) costs the
# embedded engine an error it makes and drops (~4k instructions): each is bound to a local
# first. A rule or function called from here costs ~20k: the argument checks are inline.
facts := {"refusals": refusals, "granted": granted, "conditions": conditions} if {
	input.kind == "tools/call"
	tool := input.tool
	name := tool.name # undefined unless tool is an object
	is_string(name)
	pid := input.principal.id
	hour := input.context.calls_last_hour
	args := input.arguments
	is_object(args)
	upstream := input.upstream.name
	call := input.action == "call" # (an input without an action: the general rules)

	# only with the index precomputed from exactly this data (else the general rules decide)
	c := data.symbi_data
	ix := data.precomputed.symbi.data_index
	ix.of == object.remove(c, ["principals"])
	cx := ix.calls

	# principal_entry (none for a principal of another source) and roles; an input without a
	# principal source or issuer, or data without principals, is decided by the general rules
	entry := object.get(c.principals, object.get({
		"stdio": ["stdio", pid], "key": ["keys", pid], "anonymous": ["anonymous", pid],
		"jwt": ["jwt", input.principal.issuer, pid],
	}, input.principal.source, [null]), {})
	roles := {r | some r in input.principal.roles} | {r | some r in entry.roles}
	not contains(name, ".") # the prefix patterns' "*" cannot match a "." (else: general rules)

	# the lists ("tools", "deny_tools") of the principal's roles and its own that match the
	# tool's name, from the entry of calls_index for the name (a literal pattern's), else for
	# its key (the part before "__"), else the one for any other name: one lookup for every role
	# and the conditions. A name without "__" is its own key: each key is also a named entry
	# (the patterns that match the bare key), so its keyed entry (for "key__...") is never used.
	name_parts := split(name, "__")
	kb := object.get(cx.named, name, object.get(cx.keyed, name_parts[0], cx.other))
	listed := ((({f | some r in roles; some f in kb.roles[r].always} | {f |
		some r in roles
		some [f, pres] in kb.roles[r].prefixes
		strings.any_prefix_match(name, pres)
	}) | {f |
		some r in roles
		some [f, p] in kb.roles[r].glob
		glob.match(p, [], name)
	})) | {f |
		some f in ["tools", "deny_tools"]
		some p in entry[f]
		glob.match(p, [], name)
	}
	granted := "tools" in listed
	ver := tool.verification # (a tool without one: the general rules)
	unverified := cx.unverified # (data whose upstreams are not all objects: the general rules)
	cap := object.get(entry, "max_calls_per_hour", cx.defaults.max_calls_per_hour)
	refusals := (((((({sprintf("principal %v may not use tool %v (not in its allow-list)", [pid, name]) | not granted} | {
		sprintf("tool %v is on the deny-list of principal %v", [name, pid]) | "deny_tools" in listed
	}) | {
		sprintf("tool %v is %v: only verified or pinned tools may be called", [name, ver]) |
			not ver in {"verified", "pinned"}
			not unverified[upstream][ver]
	}) | {msg |
		tool.screening.highest == "high"
		msg := screening_refusal(name, tool, tool.screening)
	}) | {sprintf("argument %v is not a path under an allowed root", [k]) |
		call
		some k, v in args
		ix.path_args[k]
		vals := {false: [v], true: v} # (a string, or each item of an array)
		vs := vals[is_array(v)]
		# the values path_ok passes (its body inline); one is refused when any is left out
		[x |
			some x in vs
			is_string(x)
			strings.replace_n({"\\": "", "\u0000": ""}, x) == x
			parts := split(x, "/")
			not "." in parts
			not ".." in parts
			strings.any_prefix_match(concat("", [x, "\u0000"]), ix.roots)
		] != vs
	}) | {msg |
		call
		some k, v in args
		ix.url_args[k]
		pats := {false: ix.url_re_plain, true: ix.url_re} # (see url_re_plain)
		vals := {false: [v], true: v}
		some x in vals[is_array(v)]
		hosts := [lower(m[0][1]) | # url_host(x) inline: the regex runs once
			is_string(x)
			m := regex.find_all_string_submatch_n(pats[contains(x, "@")], x, 1)
			count(m) == 1
		]
		# url_refused(k, hosts, ix.url_hosts) inline (host_ok: a listed host, else a glob)
		some msg in {sprintf("argument %v is not an http(s) URL", [k]) | hosts == []} | {sprintf("argument %v: host %v is not in the allow-list", [k, h]) |
			some h in hosts
			not ix.url_hosts.exact[h]
			[1 | some pat in ix.url_hosts.glob; glob.match(pat, ["."], h)] == []
		}
	}) | {msg |
		resp := input.input_responses # (first: a call without answers costs one lookup)
		some msg in answer_refusals(resp, ix)
	}) | {sprintf("principal %v reached its limit of %d calls per hour", [pid, cap]) |
		call
		cap > 0
		hour >= cap
	}

	# the conditions (as tool_conditions computes them), only for a call that is granted and
	# not refused: the entry's bucket holds those of the patterns that match every name it is
	# for (fixed, and the lowest of their rate limits); the others are globbed (call_conditions)
	conditions := object.union_n([o |
		granted
		refusals == set()
		cb := kb.conditions
		base := object.get(entry, "rate_limit", cx.defaults.rate_limit)
		some o in [
			cb.fixed,
			{"rate_limit": base},
			{"rate_limit": min([m, base]) | m := cb.rate_cap},
			{k: v | not cb.simple; some k, v in call_conditions(name, cb, base)},
			{"sandbox_tier": code_tier_of(roles) | tool.code_tool == true},
		]
	])
} else := {"refusals": refusals, "granted": granted, "conditions": {"rate_limit": rate}} if {
	# the agent bus's kinds (the rules of bus_deny, volume_deny, other_permitted and
	# other_conditions), for a caller with a principal id and counters
	kind := input.kind
	fields := {"bus/send": "bus_peers", "bus/publish": "publish_topics", "bus/subscribe": "subscribe_topics"}
	field := fields[kind]
	pid := input.principal.id
	hour := input.context.calls_last_hour
	call := input.action == "call"
	c := data.symbi_data
	paths := {
		"stdio": ["stdio", pid], "key": ["keys", pid], "anonymous": ["anonymous", pid],
		"jwt": ["jwt", input.principal.issuer, pid],
	}
	entry := object.get(c.principals, paths[input.principal.source], {})
	roles := {r | some r in input.principal.roles} | {r | some r in entry.roles}
	pats := {p | some p in entry[field]} | {p |
		some r in roles
		some p in c.roles[r][field]
	}
	agent := object.get(input, "agent", null)
	has_agent := ({1 | is_string(agent.id)} | {1 | is_string(agent)}) != set()
	# the caller's qualified id (principal_qualified), to compare with the recipient's
	src := input.principal.source
	iss := object.get(input.principal, "issuer", null)
	mine := {q |
		kind == "bus/send"
		src == "jwt"
		is_string(iss)
		is_string(pid)
		q := concat("", ["jwt:", iss, "#", pid])
	} | {q |
		kind == "bus/send"
		src != "jwt"
		is_string(pid)
		q := concat(":", [src, pid])
	}
	granted := (({1 |
		kind == "bus/send"
		input.recipient.principal in mine
	} | {1 |
		kind == "bus/send"
		some p in pats
		glob.match(p, [], input.recipient.principal)
	}) | {1 |
		kind != "bus/send"
		is_string(input.topic)
		some p in pats
		glob.match(p, ["."], input.topic)
	}) != set()
	cap := object.get(entry, "max_calls_per_hour", object.get(c, "default_max_calls_per_hour", 0))
	refusals := (({sprintf("%v needs an agent: the caller %v has no agent id", [kind, pid]) | not has_agent} | {msg |
		not granted
		kind == "bus/send"
		msg := sprintf("principal %v may not message agents of principal %v", [array.concat([q | some q in mine], [pid])[0], input.recipient.principal])
	}) | {msg |
		not granted
		kind != "bus/send"
		msg := sprintf("principal %v may not %v topic %v", [pid, split(kind, "/")[1], input.topic])
	}) | {sprintf("principal %v reached its limit of %d calls per hour", [pid, cap]) |
		call
		cap > 0
		hour >= cap
	}
	rate := object.get(entry, "bus_rate_limit", object.get(c, "default_bus_rate_limit", 600))
} else := {"refusals": refusals, "granted": granted, "conditions": conditions} if {
	# memory and knowledge kinds (the rules of memory_deny, volume_deny, other_permitted and
	# other_conditions), for a caller with an agent object
	kind := input.kind
	modes := {"context/read": "read", "context/write": "write", "knowledge/search": "write"}
	mode := modes[kind]
	pid := input.principal.id
	hour := input.context.calls_last_hour
	call := input.action == "call"
	aid := input.agent.id
	is_string(aid)
	aid != ""
	c := data.symbi_data
	paths := {
		"stdio": ["stdio", pid], "key": ["keys", pid], "anonymous": ["anonymous", pid],
		"jwt": ["jwt", input.principal.issuer, pid],
	}
	entry := object.get(c.principals, paths[input.principal.source], {})
	roles := {r | some r in input.principal.roles} | {r | some r in entry.roles}
	mcfg := object.get(c, "memory", {})
	mem := object.get(input, "memory", {})
	mtype := object.get(mem, "memory_type", "")
	owner := object.get(mem, "owner", "")
	is_mem := kind != "knowledge/search"
	space := object.get(mem, "namespace", "")
	ns_ok := ({1 |
		mtype == "shared"
		some r in roles
		r in mcfg.namespaces[space][mode]
	}) != set()
	kb_ok := ({1 |
		not is_mem
		some pat, rs in object.get(mcfg, "knowledge", {})
		glob.match(pat, [], object.get(mem, "base", ""))
		some r in roles
		r in rs
	}) != set()
	granted := (({1 |
		is_mem
		mtype in {"short_term", "working", "long_term"}
		owner == aid
	} | {1 |
		is_mem
		ns_ok
	}) | {1 |
		not is_mem
		kb_ok
	}) != set()
	cap := object.get(entry, "max_calls_per_hour", object.get(c, "default_max_calls_per_hour", 0))
	refusals := ((({msg |
		is_mem
		mtype != "shared"
		owner != aid
		msg := sprintf("agent %v may not %v the %v memory of agent %v", [aid, mode, mtype, owner])
	} | {msg |
		is_mem
		mtype == "shared"
		not ns_ok
		msg := sprintf("principal %v may not %v shared namespace %v", [pid, mode, space])
	}) | {msg |
		not is_mem
		not kb_ok
		msg := sprintf("principal %v may not search knowledge base %v", [pid, object.get(mem, "base", "")])
	})) | {sprintf("principal %v reached its limit of %d calls per hour", [pid, cap]) |
		call
		cap > 0
		hour >= cap
	}
	conditions := {"redact_text": pats |
		kind == "context/write"
		pats := object.get(mcfg, "redact_text", [])
		count(pats) > 0
	}
} else := {"refusals": refusals, "granted": granted, "conditions": conditions} if {
	# a prompt with an arguments object, given the index of the data in force (the rules of
	# access_deny, prompt_arg_deny, volume_deny, other_permitted and other_conditions): its
	# arguments checked inline as a tool call's are (prompt_arg_deny's rule and function calls
	# cost most of a prompt's decision); without the index, the branch below decides it.
	# access_deny is not asked whole here (its prompt_ok alone cost ~510k instructions, session
	# 52): a rule added to access_deny for prompts/get must be added here too (the parity tests
	# compare this branch with OPA's general rules on the cases and variants; a digest of the
	# rules written out here fails tests/policy/test_prompt_fast_path.py when one changes).
	input.kind == "prompts/get"
	pid := input.principal.id
	hour := input.context.calls_last_hour
	call := input.action == "call"
	target := input.target
	is_string(target)
	args := object.get(input, "arguments", {}) # (none: none to check, as prompt_arg_deny)
	is_object(args) # (another value: the general rules refuse it)
	c := data.symbi_data
	ix := data.precomputed.symbi.data_index
	ix.of == object.remove(c, ["principals"])
	paths := {
		"stdio": ["stdio", pid], "key": ["keys", pid], "anonymous": ["anonymous", pid],
		"jwt": ["jwt", input.principal.issuer, pid],
	}
	entry := object.get(c.principals, paths[input.principal.source], {})
	roles := {r | some r in input.principal.roles} | {r | some r in entry.roles}
	granted := ({1 |
		pats := {p | some p in entry.prompts} | {p |
			some r in roles
			some p in c.roles[r].prompts
		}
		some p in pats
		glob.match(p, [], target)
	}) != set()
	cap := object.get(entry, "max_calls_per_hour", object.get(c, "default_max_calls_per_hour", 0))
	refusals := ((({sprintf("principal %v may not get prompt %v", [pid, target]) | not granted} | {sprintf("principal %v reached its limit of %d calls per hour", [pid, cap]) |
		call
		cap > 0
		hour >= cap
	}) | {sprintf("argument %v is not a path under an allowed root", [k]) |
		call
		some k, v in args
		ix.path_args[k]
		vals := {false: [v], true: v} # (a string, or each item of an array)
		vs := vals[is_array(v)]
		[x | # the values path_ok passes (as in the tools/call branch)
			some x in vs
			is_string(x)
			strings.replace_n({"\\": "", "\u0000": ""}, x) == x
			parts := split(x, "/")
			not "." in parts
			not ".." in parts
			strings.any_prefix_match(concat("", [x, "\u0000"]), ix.roots)
		] != vs
	}) | {msg |
		call
		some k, v in args
		ix.url_args[k]
		pats := {false: ix.url_re_plain, true: ix.url_re}
		vals := {false: [v], true: v}
		some x in vals[is_array(v)]
		hosts := [lower(m[0][1]) |
			is_string(x)
			m := regex.find_all_string_submatch_n(pats[contains(x, "@")], x, 1)
			count(m) == 1
		]
		some msg in {sprintf("argument %v is not an http(s) URL", [k]) | hosts == []} | {sprintf("argument %v: host %v is not in the allow-list", [k, h]) |
			some h in hosts
			not ix.url_hosts.exact[h]
			[1 | some pat in ix.url_hosts.glob; glob.match(pat, ["."], h)] == []
		}
	}) | {msg |
		resp := input.input_responses # (first: a request without answers costs one lookup)
		some msg in answer_refusals(resp, ix)
	}
	# redact_arguments by glob on the prompt's name (prompt_redact_args), for a granted prompt
	keys := {k |
		granted
		some p, ks in object.get(c, "redact_arguments", {})
		glob.match(p, [], target)
		some k in ks
	}
	conditions := {"redact_arguments": sort(keys) | count(keys) > 0}
} else := {"refusals": refusals, "granted": granted, "conditions": conditions} if {
	# resources, prompts and log levels by glob on the target (the rules of access_deny,
	# volume_deny, other_permitted and other_conditions)
	kind := input.kind
	fields := {"resources/read": "resources", "prompts/get": "prompts", "logging/setLevel": "log_levels"}
	field := fields[kind]
	pid := input.principal.id
	hour := input.context.calls_last_hour
	call := input.action == "call"
	target := input.target
	is_string(target)
	c := data.symbi_data
	paths := {
		"stdio": ["stdio", pid], "key": ["keys", pid], "anonymous": ["anonymous", pid],
		"jwt": ["jwt", input.principal.issuer, pid],
	}
	entry := object.get(c.principals, paths[input.principal.source], {})
	roles := {r | some r in input.principal.roles} | {r | some r in entry.roles}
	granted := ({1 |
		pats := {p | some p in entry[field]} | {p |
			some r in roles
			some p in c.roles[r][field]
		}
		some p in pats
		glob.match(p, [], target)
	}) != set()
	cap := object.get(entry, "max_calls_per_hour", object.get(c, "default_max_calls_per_hour", 0))
	refusals := (({sprintf(what, [pid, target]) |
		not granted
		what := {
			"resources/read": "principal %v may not read resource %v",
			"prompts/get": "principal %v may not get prompt %v",
			"logging/setLevel": "principal %v may not set the log level of upstream %v",
		}[kind]
	} | {sprintf("principal %v reached its limit of %d calls per hour", [pid, cap]) |
		call
		cap > 0
		hour >= cap
	}) | prompt_arg_deny) | {msg |
		resp := input.input_responses # (first: a request without answers costs one lookup)
		some msg in answer_refusals(resp, idx)
	}
	conditions := {"redact_arguments": prompt_redact_args | kind == "prompts/get"; count(prompt_redact_args) > 0}
} else := {"refusals": access_deny | volume_deny, "granted": true, "conditions": {}} if {
	# an upstream's own request to the client: the rules the general path asks (access_deny,
	# whole: a rule added to it joins this path too; other_permitted grants it, no conditions)
	# without the general path's other rules
	input.kind == "server_request"
	is_string(input.server)
	is_string(input.method)
}

screening_refusal(name, tool, screened) := msg if {
	object.get(screened, "accepted", false) != true
	object.get(tool, "verification_mode", "strict") in {"strict", "tofu"}
	rules := sort({f.rule | some f in object.get(screened, "findings", []); f.severity == "high"})
	msg := sprintf("tool %v is blocked by screening (%v): see `symbi scan`", [name, concat(", ", rules)])
}

# ---------------------------------------------------------------------------------------
# Who is asking for what
# ---------------------------------------------------------------------------------------

action := object.get(input, "action", "call")

kind := object.get(input, "kind", "")

is_call if action == "call"

is_tool if kind == "tools/call"

principal_id := input.principal.id

tool_name := input.tool.name

target_name := tool_name if is_tool
else := object.get(input, "target", "")

# Principals live in separate namespaces by where they come from, so an id from one source
# never picks up another source's entry (a JWT with sub=admin is not the API key "admin"):
#   principals.stdio[id]          the configured stdio principal
#   principals.keys[id]           API keys (symbi keys create --principal id)
#   principals.jwt[issuer][sub]   JWTs, per issuer
#   principals.anonymous[id]      the configured anonymous principal
# A principal without a known source gets no entry (its own roles only).
principal_source := object.get(input.principal, "source", "")

principals_of(ns) := object.get(object.get(cfg, "principals", {}), ns, {})

principal_entry := object.get(principals_of("stdio"), principal_id, {}) if principal_source == "stdio"
else := object.get(principals_of("keys"), principal_id, {}) if principal_source == "key"
else := object.get(object.get(principals_of("jwt"), object.get(input.principal, "issuer", ""), {}), principal_id, {}) if {
	principal_source == "jwt"
}
else := object.get(principals_of("anonymous"), principal_id, {}) if principal_source == "anonymous"
else := {}

upstream_entry := object.get(object.get(cfg, "upstreams", {}), input.upstream.name, {})

# Roles come from the authenticated principal (config / API key / JWT) and from the data.
roles := {r | some r in input.principal.roles} | {r | some r in object.get(principal_entry, "roles", [])}

role_entry(r) := object.get(object.get(cfg, "roles", {}), r, {})

# Glob patterns granted to this principal under `field` (resources, prompts, log_levels,
# bus_peers, topics; tools and deny_tools go through the index below).
patterns(field) := {p | some p in object.get(principal_entry, field, [])} | {p |
	some r in roles
	some p in object.get(role_entry(r), field, [])
}

matches_any(pats, name) if {
	some p in pats
	glob.match(p, [], name)
}

# ---------------------------------------------------------------------------------------
# The index of the data's tool patterns (a function of the data alone)
# ---------------------------------------------------------------------------------------

# A pattern without glob syntax matches one name: itself. A pattern whose text before its
# first "__" (and that "__") is literal only matches names that start the same way, so the
# part of the name before its first "__" (tool_key) picks the only patterns worth globbing;
# the rest ("*", "time*") are tried for every name.
#
# The gateway evaluates data_index once per policy load and hands it back as
# data.precomputed.symbi.data_index (gateway/policy/loader.py); it is used only while it was
# computed from exactly the data in force (`with data.symbi_data as ...` in a test, or an OPA
# server, computes it in the evaluation instead). Same rules either way, only the cost differs.
idx := pre if {
	pre := data.precomputed.symbi.data_index
	pre.of == object.remove(cfg, ["principals"])
} else := data_index

data_index := {
	# what it was computed from: the data but its principals (which it does not read, and
	# which can be many: a decision compares this with the data in force)
	"of": object.remove(cfg, ["principals"]),
	"roles": {r: glob_index([[f, p] |
		some f in ["tools", "deny_tools"]
		some p in object.get(e, f, [])
	]) |
		some r, e in object.get(cfg, "roles", {})
	},
	"conditions": glob_index(array.concat(
		[["audit_minimal", p] | some p in object.get(cfg, "audit_minimal", [])],
		[[f, p] |
			some f in ["tool_rate_limits", "max_result_bytes", "redact_arguments", "redact_result"]
			some p, _ in object.get(cfg, f, {})
		],
	)),
	# the tool lists and conditions for facts (see calls_index)
	"calls": calls_index,
	# fs_roots as prefixes of a path followed by a NUL (see path_ok): a root and a NUL (the
	# root itself), and the root without its trailing "/"s and a "/" (the paths under it)
	"roots": array.concat(
		[concat("", [r, "\u0000"]) | some r in object.get(cfg, "fs_roots", []); is_string(r)],
		[concat("", [trim_right(r, "/"), "/"]) | some r in object.get(cfg, "fs_roots", [])],
	),
	# url_hosts in lower case: the literal ones match only themselves, the others are globbed
	"url_hosts": {
		"exact": {h: true | some p in object.get(cfg, "url_hosts", []); h := lower(p); literal(h)},
		"glob": [h | some p in object.get(cfg, "url_hosts", []); h := lower(p); not literal(h)],
	},
	# the arguments whose values are checked as paths, as URLs (a lookup each: facts)
	"path_args": {k: true | some k in object.get(cfg, "path_arguments", [])},
	"url_args": {k: true | some k in object.get(cfg, "url_arguments", [])},
	# the URL patterns (see url_re_plain; facts reads them here: a rule's value costs more)
	"url_re": url_re,
	"url_re_plain": url_re_plain,
	# argument name -> the checks its values get ("path", "url")
	"arg_checks": {k: cs |
		some c, field in {"path": "path_arguments", "url": "url_arguments"}
		some k in object.get(cfg, field, [])
		cs := [d | some d, f in {"path": "path_arguments", "url": "url_arguments"}; k in object.get(cfg, f, [])]
	},
}

# The tools/call fast path's index (facts): the patterns of each role's tool lists and of the
# conditions, each with the hit it gives when it matches the tool's name ("tools",
# "deny_tools", "audit_minimal", ["tool_rate_limits", 10], ["redact_arguments", ["token"]],
# ...), so one pass over the patterns that can match a name gives its lists and conditions.
# An entry per key (the part of a name before its first "__" that some pattern starts with:
# "fs" for "fs__read_*"), per literal name (its own hits on top of its key's), and one for
# every other name; each holds a bucket per role and one for the conditions. For names
# without a "." (facts sends the others to the general rules).
calls_index := object.union({
	"keyed": {k: call_entry(k, null) | some k in call_keys},
	"named": {n: call_entry(name_key(n), n) | some n in call_names | {k | some k in call_keys; not contains(k, ".")}},
	"other": call_entry(null, null),
	# the data's defaults for a principal without its own cap or rate
	"defaults": {
		"max_calls_per_hour": object.get(cfg, "default_max_calls_per_hour", 0),
		"rate_limit": object.get(cfg, "default_rate_limit", 60),
	},
}, {"unverified": unverified |
	# upstream -> the verification states besides verified and pinned its tools may be called
	# in: those of the upstreams with allow_unverified (a lookup instead of three reads of the
	# data per call). Absent when the upstreams are not all objects (the general rules decide
	# then, as they read them).
	ups := object.get(cfg, "upstreams", {})
	is_object(ups)
	[u | some u, e in ups; not is_object(e)] == []
	unverified := {u: {"unverified": true, "off": true} | some u, e in ups; e.allow_unverified == true}
})

# [hit, pattern] of the tool lists of each role, and of the conditions
call_roles := {r: [[f, p] |
	some f in ["tools", "deny_tools"]
	some p in object.get(e, f, [])
] |
	some r, e in object.get(cfg, "roles", {})
}

call_conds := array.concat(
	[["audit_minimal", p] | some p in object.get(cfg, "audit_minimal", [])],
	[[[f, v], p] |
		some f in ["tool_rate_limits", "max_result_bytes", "redact_arguments", "redact_result"]
		some p, v in object.get(cfg, f, {})
	],
)

# the patterns, their keys, and the literal ones without a "."
call_patterns := {p | some [_, p] in call_conds} | {p | some es in call_roles; some [_, p] in es}

call_keys := {k | some p in call_patterns; not literal(p); k := pattern_key(p)}

call_names := {p | some p in call_patterns; literal(p); not contains(p, ".")}

# the key of a literal name whose key has an entry (else null: the entry for other names)
name_key(n) := k if {
	k := split(n, "__")[0]
	k != n
	k in call_keys
} else := null

# the buckets for the names of key k (null: other names), and of the literal name n (null:
# none): the pairs of that key, the unkeyed ones, and n's own hits (as a pattern that matches
# every name of the bucket)
call_entry(k, n) := {
	"roles": {r: call_bucket(call_pairs(es, k, n), start) | some r, es in call_roles},
	"conditions": call_bucket(call_pairs(call_conds, k, n), start),
} if {
	start := key_start(k)
}

key_start(k) := "" if k == null
else := concat("", [k, "__"])

call_pairs(entries, k, n) := array.concat(
	[e | some e in entries; not literal(e[1]); pattern_key(e[1]) == k],
	array.concat(
		[e | some e in entries; not literal(e[1]); not pattern_key(e[1])],
		[[h, "*"] | some [h, p] in entries; p == n],
	),
)

# A bucket's hits for a name that starts with `start` ("key__", or "" for any name): always,
# those whose pattern matches every such name ("*" and start + "*": a "*" matches any run of
# characters but "."), with the conditions they grant (fixed, and the lowest of their rate
# limits, rate_cap); prefixes, [hit, [prefix, ...]] of the other patterns that are a literal
# prefix and a final "*" (one strings.any_prefix_match a hit, not a startswith a pattern);
# glob, [hit, pattern] of the rest; simple: none but always.
call_bucket(entries, start) := object.union(
	{
		"always": always,
		"simple": count(prefix) + count(glob) == 0,
		"fixed": object.union_n([
			{"audit": {false: "full", true: "minimal"}["audit_minimal" in always]},
			{"max_result_bytes": min(caps) | caps := {v | some [f, v] in always; f == "max_result_bytes"}; count(caps) > 0},
			{"redact_arguments": ks | ks := sort({k | some [f, v] in always; f == "redact_arguments"; some k in v}); count(ks) > 0},
			{"redact_result": ks | ks := sort({k | some [f, v] in always; f == "redact_result"; some k in v}); count(ks) > 0},
		]),
		"prefixes": [[h, [pre | some [g, pre] in prefix; g == h]] | some h in {x | some [x, _] in prefix}],
		"glob": glob,
	},
	{"rate_cap": min(rates) | rates := {v | some [f, v] in always; f == "tool_rate_limits"}; count(rates) > 0},
) if {
	always := [h | some [h, p] in entries; star_prefix(p) in {"", start}]
	prefix := [[h, pre] | some [h, p] in entries; pre := star_prefix(p); not pre in {"", start}]
	glob := [[h, p] | some [h, p] in entries; not literal(p); not star_prefix(p)]
}

# The conditions of a granted tool call but its sandbox tier (as tool_conditions computes
# them) from the conditions' bucket for its name, where a pattern of the bucket's prefix or
# glob lists may match it.
call_conditions(name, bucket, base_rate) := object.union_n([
	{
		"rate_limit": min({v | some [f, v] in hits; f == "tool_rate_limits"} | {base_rate}),
		"audit": {false: "full", true: "minimal"}["audit_minimal" in hits],
	},
	{"max_result_bytes": min(caps) | caps := {v | some [f, v] in hits; f == "max_result_bytes"}; count(caps) > 0},
	{"redact_arguments": ks | ks := sort({k | some [f, v] in hits; f == "redact_arguments"; some k in v}); count(ks) > 0},
	{"redact_result": ks | ks := sort({k | some [f, v] in hits; f == "redact_result"; some k in v}); count(ks) > 0},
]) if {
	hits := ({h | some h in bucket.always} | {h |
		some [h, pres] in bucket.prefixes
		strings.any_prefix_match(name, pres)
	}) | {h |
		some [h, p] in bucket.glob
		glob.match(p, [], name)
	}
}

glob_syntax := `[*?\[\]{}\\]`

literal(p) if not regex.match(glob_syntax, p)

pattern_key(p) := parts[0] if {
	parts := split(p, "__")
	count(parts) > 1
	literal(parts[0])
}

# entries: [field, pattern] pairs. exact: literal pattern -> its fields; keyed: key -> a
# bucket of the pairs with that key and every unkeyed pair; other: the bucket of the unkeyed
# pairs.
glob_index(entries) := {"exact": exact, "keyed": keyed, "other": bucket(other)} if {
	exact := {p: [f | some [f, q] in entries; q == p] | some [_, p] in entries; literal(p)}
	other := [e | some e in entries; not literal(e[1]); not pattern_key(e[1])]
	keyed := {k: bucket(array.concat([e | some e in entries; not literal(e[1]); pattern_key(e[1]) == k], other)) |
		some [_, p] in entries
		not literal(p)
		k := pattern_key(p)
	}
}

# A bucket's patterns for a name without a "." (mode "plain"): those that are a literal
# prefix and a final "*" match exactly the names that start with the prefix (the "*" matches
# any run of characters but the delimiter "."), as [field, pattern, prefix]; the others are
# globbed. For a name with a "." (mode "dotted") every pattern is globbed.
bucket(entries) := {
	"plain": {
		"prefix": [[f, p, pre] | some [f, p] in entries; pre := star_prefix(p)],
		"glob": [[f, p] | some [f, p] in entries; not star_prefix(p)],
	},
	"dotted": {"prefix": [], "glob": entries},
}

star_prefix(p) := pre if {
	pre := trim_suffix(p, "*")
	pre != p
	literal(pre)
}

glob_mode := {false: "plain", true: "dotted"}

tool_key := split(tool_name, "__")[0]

tool_mode := glob_mode[contains(tool_name, ".")]

# the [field, pattern] entries of a bucket whose pattern matches the tool's name
bucket_matches(ix) := {[f, p] |
	some [f, p, pre] in object.get(ix.keyed, tool_key, ix.other)[tool_mode].prefix
	startswith(tool_name, pre)
} | {[f, p] |
	some [f, p] in object.get(ix.keyed, tool_key, ix.other)[tool_mode].glob
	glob.match(p, [], tool_name)
}

# the lists ("tools", "deny_tools") of this principal and its roles that match the tool, and
# the [field, pattern] entries of the conditions that match it
list_matches := ({f |
	some r in roles
	some f in idx.roles[r].exact[tool_name]
} | {f |
	some r in roles
	some [f, _] in bucket_matches(idx.roles[r])
}) | {f |
	some f in ["tools", "deny_tools"]
	some p in object.get(principal_entry, f, [])
	glob.match(p, [], tool_name)
}

condition_matches := {[f, tool_name] | some f in idx.conditions.exact[tool_name]} | bucket_matches(idx.conditions)

# ---------------------------------------------------------------------------------------
# Tools: allow-list and deny-list by glob (the principal's own and its roles')
# ---------------------------------------------------------------------------------------

tool_allowed if "tools" in list_matches

tool_deny contains msg if {
	not tool_allowed
	msg := sprintf("principal %v may not use tool %v (not in its allow-list)", [principal_id, tool_name])
}

tool_deny contains msg if {
	"deny_tools" in list_matches
	msg := sprintf("tool %v is on the deny-list of principal %v", [tool_name, principal_id])
}

# ---------------------------------------------------------------------------------------
# Allow-lists for resources and prompts (by glob on their name / uri) and log levels
# ---------------------------------------------------------------------------------------

resource_ok if matches_any(patterns("resources"), input.target)

prompt_ok if matches_any(patterns("prompts"), input.target)

log_level_ok if matches_any(patterns("log_levels"), input.target)

# logging/setLevel changes a shared upstream's log level for every caller (target = the
# upstream's name): only principals granted that upstream under `log_levels` may.
access_deny contains msg if {
	kind == "logging/setLevel"
	not log_level_ok
	msg := sprintf("principal %v may not set the log level of upstream %v", [principal_id, input.target])
}

access_deny contains msg if {
	kind == "resources/read"
	not resource_ok
	msg := sprintf("principal %v may not read resource %v", [principal_id, input.target])
}

access_deny contains msg if {
	kind == "prompts/get"
	not prompt_ok
	msg := sprintf("principal %v may not get prompt %v", [principal_id, input.target])
}

access_deny contains msg if some msg in prompt_arg_deny

access_deny contains msg if some msg in server_request_deny

# ---------------------------------------------------------------------------------------
# An upstream's own requests to the calling client (kind "server_request"): sampling the
# client's model, eliciting from its user, listing its roots. Asked per request, before it
# reaches the client (input.method, input.server = the server's name, input.request = the
# request's params without _meta: messages, maxTokens, modelPreferences, systemPrompt... for
# sampling; message and requestedSchema for elicitation; nothing for roots).
#   upstreams.<name>.server_requests   the methods that server may send (a list)
#   server_requests.methods            the methods any server may send (default: all three)
#   upstreams.<name>.max_sampling_tokens, server_requests.max_sampling_tokens
#                                      the most tokens a sampling request may ask for (8192)
#   url_hosts                          the hosts a URL-mode elicitation may send the user to
# ---------------------------------------------------------------------------------------

server_request_cfg := object.get(cfg, "server_requests", {})

server_request_upstream := object.get(object.get(cfg, "upstreams", {}), input.server, {})

server_request_methods := object.get(server_request_upstream, "server_requests", object.get(
	server_request_cfg, "methods",
	["roots/list", "elicitation/create", "sampling/createMessage"],
))

server_request_max_tokens := object.get(server_request_upstream, "max_sampling_tokens", object.get(
	server_request_cfg, "max_sampling_tokens",
	8192,
))

server_request_deny contains msg if {
	kind == "server_request"
	not input.method in server_request_methods
	msg := sprintf("upstream %v may not send %v to clients (server_requests)", [input.server, input.method])
}

server_request_deny contains msg if {
	kind == "server_request"
	input.method == "sampling/createMessage"
	not sampling_tokens_ok(object.get(object.get(input, "request", {}), "maxTokens", null))
	msg := sprintf(
		"upstream %v asked for more sampling tokens than max_sampling_tokens allows (%v)",
		[input.server, server_request_max_tokens],
	)
}

# A URL-mode elicitation asks the user to open a link: its host must be in url_hosts, as a
# URL argument's (a phishing page in the user's browser otherwise).
server_request_deny contains msg if {
	kind == "server_request"
	input.method == "elicitation/create"
	request := object.get(input, "request", {})
	object.get(request, "mode", "form") == "url"
	hosts := [h | h := url_host(object.get(request, "url", null))]
	m := url_refused("url", hosts, idx.url_hosts)
	msg := sprintf("upstream %v asked the user to open a URL: %v", [input.server, m])
}

sampling_tokens_ok(tokens) if {
	is_number(tokens)
	is_number(server_request_max_tokens) # a string in the data would compare above every number
	tokens >= 0
	tokens <= server_request_max_tokens
}

# A prompt's arguments reach its upstream as a tool's do: the same path and URL checks
# (arg_values) and the same argument redaction (redact_arguments, by glob on the prompt's
# name, which is namespaced as a tool's is: "upstream__name").
prompt_arg_deny contains msg if {
	kind == "prompts/get"
	is_call
	args := input.arguments # (an input without arguments has none to check)
	not is_object(args)
	msg := sprintf("arguments of prompt %v are not an object", [target_name])
}

prompt_arg_deny contains msg if {
	kind == "prompts/get"
	is_call
	some [c, k, v] in arg_values
	msg := arg_refused(c, k, v, idx)
}

prompt_redact_args := sort({k |
	kind == "prompts/get"
	target := input.target
	is_string(target)
	some p, ks in object.get(cfg, "redact_arguments", {})
	glob.match(p, [], target)
	some k in ks
})

other_conditions["redact_arguments"] := prompt_redact_args if {
	kind == "prompts/get"
	count(prompt_redact_args) > 0
}

# ---------------------------------------------------------------------------------------
# Tool verification: only verified or pinned tools, unless the upstream is explicitly
# allowed to serve unverified tools (allow_unverified in the data file).
# ---------------------------------------------------------------------------------------

verification := object.get(input.tool, "verification", "unverified") if is_object(input.tool)

verification_ok if verification in {"verified", "pinned"}

verification_ok if {
	verification in {"unverified", "off"}
	object.get(upstream_entry, "allow_unverified", false) == true
}

tool_deny contains msg if {
	not verification_ok
	msg := sprintf("tool %v is %v: only verified or pinned tools may be called", [tool_name, verification])
}

# Screening (gateway/screen): a definition with a high-severity finding (hidden
# instructions, concealment, shadowing, credential requests, exfiltration, invisible
# characters, homoglyph names, side-channel parameters) is blocked under strict and tofu
# verification until a person accepts those findings for that definition (`symbi tools
# approve --accept-screening`); under warn and off it stays callable and marked.
screening := object.get(input.tool, "screening", {}) if is_object(input.tool)

screening_mode := object.get(input.tool, "verification_mode", "strict") if is_object(input.tool)

tool_deny contains msg if {
	object.get(screening, "highest", null) == "high"
	object.get(screening, "accepted", false) != true
	screening_mode in {"strict", "tofu"}
	rules := sort({f.rule | some f in object.get(screening, "findings", []); f.severity == "high"})
	msg := sprintf("tool %v is blocked by screening (%v): see `symbi scan`", [tool_name, concat(", ", rules)])
}

# ---------------------------------------------------------------------------------------
# Argument rules (calls only: a listing has no arguments)
# ---------------------------------------------------------------------------------------

# The argument document of a call, when present, is an object (the gateway always sends one:
# `{}` for none). Any other value (a string, number, bool, null or array) is refused: the
# argument checks read an object's keys, and a value they cannot read is not let through
# unchecked. (`some k, v in` a scalar is an error on the embedded engine and undefined on OPA:
# the checks below only ever see an object, so both engines decide alike.)
tool_deny contains msg if {
	is_call
	args := input.arguments # (an input without arguments has none to check)
	not is_object(args)
	msg := sprintf("arguments of tool %v are not an object", [target_name])
}

# [check, key, value] for every value of a path / url argument (a string or each array item)
arg_values := {[c, k, v] | args := input.arguments; is_object(args); some k, v in args; some c in idx.arg_checks[k]; not is_array(v)} | {[c, k, v] |
	args := input.arguments
	is_object(args)
	some k, vs in args
	some c in idx.arg_checks[k]
	is_array(vs)
	some v in vs
}

tool_deny contains msg if {
	is_call
	some [c, k, v] in arg_values
	msg := arg_refused(c, k, v, idx)
}

# A path is accepted only when it has no "." / ".." segment (so "/allowed/../etc" never passes
# a prefix check), no backslash or NUL, and sits lexically at or under an allowed root. A
# relative path passes only under a relative root listed in the data (relative to the
# filesystem server's own folder). Symlinks inside a root are the filesystem server's
# business: the policy sees strings.
#
# One rule body, as few builtins as the tests allow (regorus costs ~1 us a builtin, a
# membership test much less): removing every backslash and NUL leaves p unchanged exactly
# when it has none; the segments are p split at "/"; p + NUL starts with root + NUL exactly
# when p is the root (p holds no NUL).
# roots: data_index.roots
path_ok(p, roots) if {
	is_string(p)
	strings.replace_n({"\\": "", "\u0000": ""}, p) == p
	parts := split(p, "/")
	not "." in parts
	not ".." in parts
	strings.any_prefix_match(concat("", [p, "\u0000"]), roots)
}

# ix: data_index (fs roots and URL host patterns)
arg_refused(c, k, v, ix) := sprintf("argument %v is not a path under an allowed root", [k]) if {
	c == "path"
	not path_ok(v, ix.roots)
}

# host of an http(s) URL: the part after the last userinfo "@", without port; IPv6 in [].
# Anything that does not parse this way (other schemes, backslashes, whitespace) is refused.
# Whitespace is Unicode's White_Space, listed: `\s` is ASCII in OPA's regex dialect (Go) and
# Unicode in regorus' (Rust), and the two engines must decide alike.
# A NUL ends the host: glob.match fails the whole evaluation on a NUL in regorus (its glob
# placeholder; OPA matches it), a deny that cost an engine rebuild (~17 ms, 40 decisions' time).
url_re := `^(?i)https?://(?:[^/?#\\@\t\n\v\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*@)?(\[[0-9a-fA-F:.]+\]|[^/?#:@\\\x00\t\n\v\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\[\]]+)(?::[0-9]{1,5})?(?:[/?#][^\\\t\n\v\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*)?$`

# url_re without its userinfo part, for a URL without an "@" (where url_re's userinfo cannot
# match, so both find the same host). The embedded engine matches it in one pass, ~60k
# instructions fewer: url_re has to carry host and userinfo until it sees the "@" or not.
url_re_plain := `^(?i)https?://(\[[0-9a-fA-F:.]+\]|[^/?#:@\\\x00\t\n\v\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\[\]]+)(?::[0-9]{1,5})?(?:[/?#][^\\\t\n\v\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*)?$`

url_host(u) := lower(m[0][1]) if {
	is_string(u)
	m := regex.find_all_string_submatch_n(url_re, u, 1)
	count(m) == 1
}

arg_refused(c, k, v, ix) := msg if {
	c == "url"
	hosts := [h | h := url_host(v)] # the regex runs once
	msg := url_refused(k, hosts, ix.url_hosts)
}

# The refusals of a 2026 client's answers (resp: input_responses, question key -> answer):
# every value of an answer's content field named in path_arguments / url_arguments (a string
# or each array item) is checked as that argument's value is. ix: data_index
answer_refusals(resp, ix) := {msg |
	is_object(resp)
	some q, a in resp
	content := a.content
	is_object(content)
	some k, x in content
	some c in ix.arg_checks[k]
	vals := {false: [x], true: x}
	some v in vals[is_array(x)]
	m := arg_refused(c, k, v, ix)
	msg := sprintf("answer %v: %v", [q, m])
}

# pats: data_index.url_hosts
url_refused(k, hosts, pats) := sprintf("argument %v is not an http(s) URL", [k]) if count(hosts) == 0
else := sprintf("argument %v: host %v is not in the allow-list", [k, hosts[0]]) if {
	not host_ok(hosts[0], pats)
}

# (an else: a listed host is not globbed too)
host_ok(host, pats) if pats.exact[host]
else if {
	some pat in pats.glob
	glob.match(pat, ["."], host)
}

# ---------------------------------------------------------------------------------------
# The agent bus: bus/send (input.recipient = {agent, principal}), bus/publish and
# bus/subscribe (input.topic; a subscription may hold * and ? wildcards). Agents of the same
# principal may message each other; other principals only when granted by glob
# (bus_peers); topics by glob per role or principal (publish_topics, subscribe_topics,
# "." separates parts: "team.*" is one part, "team.**" any depth).
# ---------------------------------------------------------------------------------------

is_bus if kind in {"bus/send", "bus/publish", "bus/subscribe"}

# input.recipient.principal is the recipient's qualified principal, as gateway.context's
# Principal.qualified makes it: "key:alice", "jwt:<issuer>#<sub>", "stdio:local",
# "anonymous:guest". The same principal is the same id of the same source (and issuer): a JWT
# with sub=alice is not the API key alice. bus_peers globs match the qualified id
# ("key:alice", "key:agent:*", "jwt:https://idp.example.com/#*").
principal_qualified := concat("", ["jwt:", input.principal.issuer, "#", principal_id]) if {
	principal_source == "jwt"
	is_string(input.principal.issuer)
	is_string(principal_id)
} else := concat(":", [principal_source, principal_id]) if {
	principal_source != "jwt"
	is_string(principal_source)
	is_string(principal_id)
}

# who the caller is in a bus/send reason: its qualified id (its bare id if it has none)
bus_caller := principal_qualified if principal_qualified
else := principal_id

bus_peer_ok if input.recipient.principal == principal_qualified

bus_peer_ok if matches_any(patterns("bus_peers"), input.recipient.principal)

topic_granted(field) if {
	is_string(input.topic)
	some p in patterns(field)
	glob.match(p, ["."], input.topic)
}

bus_kind_field := {"bus/publish": "publish_topics", "bus/subscribe": "subscribe_topics"}

# the caller's agent id: input.agent is the runtime's {id, name, state, ...} (or a bare id)
has_bus_agent if is_string(input.agent.id)

has_bus_agent if is_string(input.agent)

bus_deny contains msg if {
	not has_bus_agent
	msg := sprintf("%v needs an agent: the caller %v has no agent id", [kind, principal_id])
}

bus_deny contains msg if {
	kind == "bus/send"
	not bus_peer_ok
	msg := sprintf("principal %v may not message agents of principal %v", [bus_caller, input.recipient.principal])
}

bus_deny contains msg if {
	field := bus_kind_field[kind]
	not topic_granted(field)
	msg := sprintf("principal %v may not %v topic %v", [principal_id, split(kind, "/")[1], input.topic])
}

# the per-agent message rate (messages per minute; counted per agent by the bus)
other_conditions["rate_limit"] := object.get(principal_entry, "bus_rate_limit", object.get(cfg, "default_bus_rate_limit", 600)) if is_bus

# ---------------------------------------------------------------------------------------
# Volume: an hourly cap per principal (the per-minute rate_limit is a condition below).
# ---------------------------------------------------------------------------------------

volume_deny contains msg if {
	is_call
	cap := object.get(principal_entry, "max_calls_per_hour", object.get(cfg, "default_max_calls_per_hour", 0))
	cap > 0
	input.context.calls_last_hour >= cap
	msg := sprintf("principal %v reached its limit of %d calls per hour", [principal_id, cap])
}

# ---------------------------------------------------------------------------------------
# Conditions (tools carry them, the bus a rate, memory redact_text and prompts
# redact_arguments; validated by the gateway, unknown ones deny)
# ---------------------------------------------------------------------------------------

# Code tools run at least in gVisor; a trusted principal may use Docker.
code_tier_of(rs) := "docker" if "trusted" in rs
else := "gvisor"

tool_conditions := conditions_of(condition_matches, principal_entry, roles, input.tool, cfg)

# the conditions granted to a tool whose name matched the [field, pattern] entries `hits`
conditions_of(hits, entry, roles, tool, c) := object.union_n([
	{"rate_limit": min(rates | {base_rate}), "audit": ["full", "minimal"][minimal]},
	{"sandbox_tier": code_tier_of(roles) | tool.code_tool == true},
	{"max_result_bytes": min(caps) | count(caps) > 0},
	{"redact_arguments": redact_args | count(redact_args) > 0},
	{"redact_result": redact_result | count(redact_result) > 0},
]) if {
	rates := {c.tool_rate_limits[p] | some [f, p] in hits; f == "tool_rate_limits"}
	base_rate := object.get(entry, "rate_limit", object.get(c, "default_rate_limit", 60))
	caps := {c.max_result_bytes[p] | some [f, p] in hits; f == "max_result_bytes"}
	redact_args := sort({k | some [f, p] in hits; f == "redact_arguments"; some k in c.redact_arguments[p]})
	redact_result := sort({k | some [f, p] in hits; f == "redact_result"; some k in c.redact_result[p]})
	minimal := count({1 | some [f, _] in hits; f == "audit_minimal"})
}

# ---------------------------------------------------------------------------------------
# Agent memory and knowledge (the memory__* / knowledge__* built-ins ask these kinds, with
# input.memory = {owner, memory_type, namespace, base}). An agent uses its own memory; a
# shared namespace by the roles listed for it (data: memory.namespaces.NAME.read / write); a
# knowledge base by the roles listed for its glob (memory.knowledge). Needs an agent identity.
# ---------------------------------------------------------------------------------------

memory_cfg := object.get(cfg, "memory", {})

memory_doc := object.get(input, "memory", {})

is_memory_kind if kind in {"context/read", "context/write"}

memory_mode := "read" if kind == "context/read"
else := "write"

memory_type := object.get(memory_doc, "memory_type", "")

memory_owner := object.get(memory_doc, "owner", "")

# input.agent is the runtime's {id, name, state, ...} object (a bare id from older inputs)
agent_id := input.agent.id if is_object(input.agent)
else := input.agent if is_string(input.agent)

has_agent if {
	is_string(agent_id)
	agent_id != ""
}

own_memory if {
	has_agent
	memory_type in {"short_term", "working", "long_term"}
	memory_owner == agent_id
}

namespace_entry := object.get(object.get(memory_cfg, "namespaces", {}), object.get(memory_doc, "namespace", ""), {})

namespace_granted if {
	memory_type == "shared"
	some r in roles
	r in object.get(namespace_entry, memory_mode, [])
}

knowledge_granted if {
	some pat, rs in object.get(memory_cfg, "knowledge", {})
	glob.match(pat, [], object.get(memory_doc, "base", ""))
	some r in roles
	r in rs
}

memory_deny contains msg if {
	not has_agent
	msg := sprintf("principal %v has no agent identity: memory and knowledge are per agent", [principal_id])
}

memory_deny contains msg if {
	is_memory_kind
	has_agent
	memory_type != "shared"
	memory_owner != agent_id
	msg := sprintf("agent %v may not %v the %v memory of agent %v", [agent_id, memory_mode, memory_type, memory_owner])
}

memory_deny contains msg if {
	is_memory_kind
	has_agent
	memory_type == "shared"
	not namespace_granted
	msg := sprintf("principal %v may not %v shared namespace %v", [principal_id, memory_mode, object.get(memory_doc, "namespace", "")])
}

memory_deny contains msg if {
	kind == "knowledge/search"
	has_agent
	not knowledge_granted
	msg := sprintf("principal %v may not search knowledge base %v", [principal_id, object.get(memory_doc, "base", "")])
}

# knowledge/ingest: asked by `symbi knowledge add` (the operator, who owns the config and the
# data dir; no agent asks it) for the patterns to redact from files before they are embedded.
memory_redact_patterns := object.get(memory_cfg, "redact_text", [])

other_conditions["redact_text"] := memory_redact_patterns if {
	kind in {"context/write", "knowledge/ingest"}
	count(memory_redact_patterns) > 0
}
