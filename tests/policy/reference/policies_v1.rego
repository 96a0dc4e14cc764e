# Symbi default policy: one decision per request, deny by default.
#
# Query: data.symbi.decision  ->  {"allow": bool, "reasons": [string], "conditions": {...}}
# Input: see gateway/policy/README.md (principal, agent, upstream, tool, arguments, context,
#        action = "call" | "list", kind = "tools/call" | "resources/read" | "prompts/get"
#        | "bus/send" | "bus/publish" | "bus/subscribe" with input.recipient / input.topic)
#        | "logging/setLevel" (target = the upstream's name).
# Data:  policies/data.json, loaded at the data root (data.symbi_data), the way
#        `opa run policies.rego policies/data.json` loads it.
#
# Portable on purpose: it runs unchanged on the embedded engine (regorus) and on a real OPA
# server. Only builtins both implement: glob.match, regex.match/find_all_string_submatch_n,
# sprintf %v/%d, split/startswith/contains/lower, sort/min/count, object.get.

package symbi

import rego.v1

default cfg := {}

cfg := data.symbi_data

# ---------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------

decision := {"allow": allow, "reasons": reasons, "conditions": granted_conditions}

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
roles contains r if some r in input.principal.roles

roles contains r if some r in object.get(principal_entry, "roles", [])

role_entry(r) := object.get(object.get(cfg, "roles", {}), r, {})

# Glob patterns granted to this principal under `field` (tools, deny_tools, resources, prompts).
patterns(field) := {p | some p in object.get(principal_entry, field, [])} | {p |
	some r in roles
	some p in object.get(role_entry(r), field, [])
}

matches_any(pats, name) if {
	some p in pats
	glob.match(p, [], name)
}

# Evaluated once per decision (rules are cached within an evaluation, functions are not).
tool_patterns := patterns("tools")

deny_tool_patterns := patterns("deny_tools")

tool_allowed if matches_any(tool_patterns, tool_name)

tool_deny_listed if matches_any(deny_tool_patterns, tool_name)

# ---------------------------------------------------------------------------------------
# Allow-lists (tools by glob; resources and prompts by glob on their name / uri)
# ---------------------------------------------------------------------------------------

target_permitted if {
	is_tool
	tool_allowed
}

target_permitted if {
	kind == "resources/read"
	matches_any(patterns("resources"), input.target)
}

target_permitted if {
	kind == "prompts/get"
	matches_any(patterns("prompts"), input.target)
}

# logging/setLevel changes a shared upstream's log level for every caller (target = the
# upstream's name): only principals granted that upstream under `log_levels` may.
target_permitted if {
	kind == "logging/setLevel"
	matches_any(patterns("log_levels"), input.target)
}

deny contains msg if {
	kind == "logging/setLevel"
	not matches_any(patterns("log_levels"), input.target)
	msg := sprintf("principal %v may not set the log level of upstream %v", [principal_id, input.target])
}

deny contains msg if {
	is_tool
	not tool_allowed
	msg := sprintf("principal %v may not use tool %v (not in its allow-list)", [principal_id, tool_name])
}

deny contains msg if {
	is_tool
	tool_deny_listed
	msg := sprintf("tool %v is on the deny-list of principal %v", [tool_name, principal_id])
}

deny contains msg if {
	kind == "resources/read"
	not matches_any(patterns("resources"), input.target)
	msg := sprintf("principal %v may not read resource %v", [principal_id, input.target])
}

deny contains msg if {
	kind == "prompts/get"
	not matches_any(patterns("prompts"), input.target)
	msg := sprintf("principal %v may not get prompt %v", [principal_id, input.target])
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

deny contains msg if {
	is_tool
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

deny contains msg if {
	is_tool
	object.get(screening, "highest", null) == "high"
	object.get(screening, "accepted", false) != true
	screening_mode in {"strict", "tofu"}
	rules := sort({f.rule | some f in object.get(screening, "findings", []); f.severity == "high"})
	msg := sprintf("tool %v is blocked by screening (%v): see `symbi scan`", [tool_name, concat(", ", rules)])
}

# ---------------------------------------------------------------------------------------
# Argument rules (calls only: a listing has no arguments)
# ---------------------------------------------------------------------------------------

path_keys := {k | some k in object.get(cfg, "path_arguments", [])}

url_keys := {k | some k in object.get(cfg, "url_arguments", [])}

path_values := arg_values(path_keys)

url_values := arg_values(url_keys)

# [key, value] for every value of a path/url argument: a string or each item of an array.
arg_values(keys) := {[k, v] | some k in keys; v := input.arguments[k]; not is_array(v)} | {[k, v] |
	some k in keys
	is_array(input.arguments[k])
	some v in input.arguments[k]
}

# A path is accepted only when it has no "." / ".." segment (so "/allowed/../etc" never passes
# a prefix check), no backslash or NUL, and sits lexically at or under an allowed root. A
# relative path passes only under a relative root listed in the data (relative to the
# filesystem server's own folder). Symlinks inside a root are the filesystem server's
# business: the policy sees strings.
path_ok(p) if {
	is_string(p)
	not contains(p, "\\")
	not contains(p, "\u0000")
	not dot_segment(p)
	some root in object.get(cfg, "fs_roots", [])
	under_root(p, root)
}

dot_segment(p) if {
	some s in split(p, "/")
	s in {".", ".."}
}

under_root(p, root) if p == root

under_root(p, root) if startswith(p, concat("", [trim_right(root, "/"), "/"]))

deny contains msg if {
	is_tool
	is_call
	some [k, v] in path_values
	not path_ok(v)
	msg := sprintf("argument %v is not a path under an allowed root", [k])
}

# host of an http(s) URL: the part after the last userinfo "@", without port; IPv6 in [].
# Anything that does not parse this way (other schemes, backslashes, whitespace) is refused.
url_re := `^(?i)https?://(?:[^/?#\\@\s]*@)?(\[[0-9a-fA-F:.]+\]|[^/?#:@\\\s\[\]]+)(?::[0-9]{1,5})?(?:[/?#][^\\\s]*)?$`

url_host(u) := lower(m[0][1]) if {
	is_string(u)
	m := regex.find_all_string_submatch_n(url_re, u, 1)
	count(m) == 1
}

url_ok(u) if {
	host := url_host(u)
	some pat in object.get(cfg, "url_hosts", [])
	glob.match(lower(pat), ["."], host)
}

deny contains msg if {
	is_tool
	is_call
	some [k, v] in url_values
	not url_host(v)
	msg := sprintf("argument %v is not an http(s) URL", [k])
}

deny contains msg if {
	is_tool
	is_call
	some [k, v] in url_values
	host := url_host(v)
	not url_ok(v)
	msg := sprintf("argument %v: host %v is not in the allow-list", [k, host])
}

# ---------------------------------------------------------------------------------------
# The agent bus: bus/send (input.recipient = {agent, principal}), bus/publish and
# bus/subscribe (input.topic; a subscription may hold * and ? wildcards). Agents of the same
# principal may message each other; other principals only when granted by glob
# (bus_peers); topics by glob per role or principal (publish_topics, subscribe_topics,
# "." separates parts: "team.*" is one part, "team.**" any depth).
# ---------------------------------------------------------------------------------------

is_bus if kind in {"bus/send", "bus/publish", "bus/subscribe"}

bus_peer_ok if input.recipient.principal == principal_id

bus_peer_ok if matches_any(patterns("bus_peers"), input.recipient.principal)

topic_granted(field) if {
	is_string(input.topic)
	some p in patterns(field)
	glob.match(p, ["."], input.topic)
}

bus_kind_field := {"bus/publish": "publish_topics", "bus/subscribe": "subscribe_topics"}

target_permitted if {
	kind == "bus/send"
	bus_peer_ok
}

target_permitted if topic_granted(bus_kind_field[kind])

# the caller's agent id: input.agent is the runtime's {id, name, state, ...} (or a bare id)
has_bus_agent if is_string(input.agent.id)

has_bus_agent if is_string(input.agent)

deny contains msg if {
	is_bus
	not has_bus_agent
	msg := sprintf("%v needs an agent: the caller %v has no agent id", [kind, principal_id])
}

deny contains msg if {
	kind == "bus/send"
	not bus_peer_ok
	msg := sprintf("principal %v may not message agents of principal %v", [principal_id, input.recipient.principal])
}

deny contains msg if {
	field := bus_kind_field[kind]
	not topic_granted(field)
	msg := sprintf("principal %v may not %v topic %v", [principal_id, split(kind, "/")[1], input.topic])
}

# the per-agent message rate (messages per minute; counted per agent by the bus)
conditions["rate_limit"] := object.get(principal_entry, "bus_rate_limit", object.get(cfg, "default_bus_rate_limit", 600)) if is_bus

# ---------------------------------------------------------------------------------------
# Volume: an hourly cap per principal (the per-minute rate_limit is a condition below).
# ---------------------------------------------------------------------------------------

deny contains msg if {
	is_call
	cap := object.get(principal_entry, "max_calls_per_hour", object.get(cfg, "default_max_calls_per_hour", 0))
	cap > 0
	input.context.calls_last_hour >= cap
	msg := sprintf("principal %v reached its limit of %d calls per hour", [principal_id, cap])
}

# ---------------------------------------------------------------------------------------
# Conditions (only tools carry them; validated by the gateway, unknown ones deny)
# ---------------------------------------------------------------------------------------

# Code tools run at least in gVisor; a trusted principal may use Docker.
code_tier := "docker" if "trusted" in roles
else := "gvisor"

conditions["sandbox_tier"] := code_tier if {
	is_tool
	input.tool.code_tool == true
}

base_rate := object.get(principal_entry, "rate_limit", object.get(cfg, "default_rate_limit", 60))

tool_rates := {n | some pat, n in object.get(cfg, "tool_rate_limits", {}); glob.match(pat, [], tool_name)}

conditions["rate_limit"] := min(tool_rates | {base_rate}) if is_tool

tool_caps := {n | some pat, n in object.get(cfg, "max_result_bytes", {}); glob.match(pat, [], tool_name)}

conditions["max_result_bytes"] := min(tool_caps) if {
	is_tool
	count(tool_caps) > 0
}

redactions(field) := sort({k |
	some pat, keys in object.get(cfg, field, {})
	glob.match(pat, [], tool_name)
	some k in keys
})

redact_arguments := redactions("redact_arguments")

redact_result := redactions("redact_result")

conditions["redact_arguments"] := redact_arguments if {
	is_tool
	count(redact_arguments) > 0
}

conditions["redact_result"] := redact_result if {
	is_tool
	count(redact_result) > 0
}

audit_minimal if matches_any(object.get(cfg, "audit_minimal", []), tool_name)

conditions["audit"] := "minimal" if {
	is_tool
	audit_minimal
}

conditions["audit"] := "full" if {
	is_tool
	not audit_minimal
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

target_permitted if {
	is_memory_kind
	own_memory
}

target_permitted if {
	is_memory_kind
	has_agent
	namespace_granted
}

target_permitted if {
	kind == "knowledge/search"
	has_agent
	knowledge_granted
}

deny contains msg if {
	kind in {"context/read", "context/write", "knowledge/search"}
	not has_agent
	msg := sprintf("principal %v has no agent identity: memory and knowledge are per agent", [principal_id])
}

deny contains msg if {
	is_memory_kind
	has_agent
	memory_type != "shared"
	memory_owner != agent_id
	msg := sprintf("agent %v may not %v the %v memory of agent %v", [agent_id, memory_mode, memory_type, memory_owner])
}

deny contains msg if {
	is_memory_kind
	has_agent
	memory_type == "shared"
	not namespace_granted
	msg := sprintf("principal %v may not %v shared namespace %v", [principal_id, memory_mode, object.get(memory_doc, "namespace", "")])
}

deny contains msg if {
	kind == "knowledge/search"
	has_agent
	not knowledge_granted
	msg := sprintf("principal %v may not search knowledge base %v", [principal_id, object.get(memory_doc, "base", "")])
}

# knowledge/ingest: asked by `symbi knowledge add` (the operator, who owns the config and the
# data dir; no agent asks it) for the patterns to redact from files before they are embedded.
target_permitted if kind == "knowledge/ingest"

memory_redact_patterns := object.get(memory_cfg, "redact_text", [])

conditions["redact_text"] := memory_redact_patterns if {
	kind in {"context/write", "knowledge/ingest"}
	count(memory_redact_patterns) > 0
}
