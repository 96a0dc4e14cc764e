"""ValidateArguments in-process: the tool's inputSchema is enforced before the upstream, and
the refusal names the argument path (jsonschema, Draft 2020-12 unless the schema says)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.chain import build_chain
from gateway.context import CallContext, CallKind, Principal, ToolInfo
from gateway.errors import ArgumentsInvalid
from gateway.steps.arguments import ValidateArguments

LOCAL = Principal(id="local")
SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "items": {"type": "array", "items": {"type": "string"}}},
    "required": ["n"],
    "additionalProperties": False,
}


def tool(schema: Any) -> ToolInfo:
    return ToolInfo(
        name="up__t", original_name="t", upstream="up", definition={"name": "t", "inputSchema": schema}
    )


def run(step: ValidateArguments, call: CallContext) -> list[CallContext]:
    seen: list[CallContext] = []

    async def endpoint(c: CallContext) -> str:
        seen.append(c)
        return "ok"

    async def go() -> Any:
        return await build_chain([step], endpoint)(call)

    asyncio.run(go())
    return seen


def call_of(args: dict[str, Any], schema: Any = SCHEMA, kind: CallKind = "tools/call") -> CallContext:
    return CallContext(principal=LOCAL, kind=kind, target="up__t", arguments=args, tool=tool(schema))


def test_valid_arguments_reach_the_upstream_unchanged() -> None:
    call = call_of({"n": 1, "items": ["a"]})
    assert run(ValidateArguments(), call) == [call]
    assert call.arguments == {"n": 1, "items": ["a"]}


def test_invalid_arguments_are_refused_with_one_reason_per_error_naming_its_path() -> None:
    with pytest.raises(ArgumentsInvalid) as err:
        run(ValidateArguments(), call_of({"n": "x", "items": ["a", 2]}))
    # sorted by path; the path is the part of each reason a client can act on
    assert [r.split(":")[0] for r in err.value.reasons] == ["arguments.items[1]", "arguments.n"]


def test_at_most_ten_reasons() -> None:
    with pytest.raises(ArgumentsInvalid) as err:
        run(ValidateArguments(), call_of({"n": 1, "items": list(range(12))}))
    assert len(err.value.reasons) == 10


def test_an_invalid_schema_refuses_the_call() -> None:
    with pytest.raises(ArgumentsInvalid):
        run(
            ValidateArguments(),
            call_of({"n": 1}, schema={"type": "object", "properties": {"n": {"type": 7}}}),
        )


def test_the_same_schema_is_checked_again_on_the_next_call() -> None:
    step = ValidateArguments()
    run(step, call_of({"n": 1}))
    with pytest.raises(ArgumentsInvalid):
        run(step, call_of({"n": "x"}))  # the cached validator, still enforcing


def test_only_tool_calls_with_a_resolved_tool_are_validated() -> None:
    other = call_of({"n": "x"}, kind="prompts/get")
    unresolved = CallContext(principal=LOCAL, kind="tools/call", target="up__t", arguments={"n": "x"})
    assert run(ValidateArguments(), other) == [other]
    assert run(ValidateArguments(), unresolved) == [unresolved]
    unresolved_prompt = CallContext(principal=LOCAL, kind="prompts/get", target="p", arguments={"n": "x"})
    assert run(ValidateArguments(), unresolved_prompt) == [unresolved_prompt]


def test_a_drifted_definition_is_never_checked_with_the_validator_of_the_one_it_replaced() -> None:
    # the validators are kept per schema object; the catalogue makes a new definition when the
    # upstream changes a tool (gateway.catalog._fresh_info), under the same tool name
    step = ValidateArguments()
    loose = {"type": "object", "properties": {"n": {"type": "integer"}}}
    strict = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}, "required": ["n"]}
    assert run(step, call_of({"n": 9}, schema=loose))
    for args in ({"n": 9}, {}):  # the tightened definition: enforced at once
        with pytest.raises(ArgumentsInvalid):
            run(step, call_of(args, schema=strict))
    assert run(step, call_of({"n": 9}, schema=dict(loose)))  # an equal copy: the same answer as before
    with pytest.raises(ArgumentsInvalid):
        run(step, call_of({"n": 9}, schema=strict))  # and the strict one's is still its own


def test_a_tool_without_a_schema_mapping_takes_an_object_schema_built_once(monkeypatch: Any) -> None:
    """No ``inputSchema`` (or not a mapping): the arguments must still be an object, and the
    validator is made once for that definition, not again on every call."""
    from jsonschema import validators

    made: list[Any] = []
    real = validators.validator_for

    def counted(schema: Any, default: Any) -> Any:
        made.append(schema)
        return real(schema, default=default)

    monkeypatch.setattr(validators, "validator_for", counted)
    step = ValidateArguments()
    for schema in (None, "not a schema"):
        for _ in range(3):
            assert run(step, call_of({"anything": 1}, schema=schema))
    # (check_schema asks it about the meta-schema too)
    assert [s for s in made if s == {"type": "object"}] == [{"type": "object"}] * 2
    bare = ToolInfo(name="up__t", original_name="t", upstream="up", definition={"name": "t"})
    not_an_object = CallContext(principal=LOCAL, kind="tools/call", target="up__t", arguments=[1], tool=bare)  # type: ignore[arg-type]
    with pytest.raises(ArgumentsInvalid):
        run(step, not_an_object)


def test_arguments_past_the_member_limit_are_refused_before_the_schema_is_asked() -> None:
    wide = {"n": 1, "items": [str(i) for i in range(99)]}  # 2 keys + 99 items
    assert run(ValidateArguments(max_members=101), call_of(wide))
    with pytest.raises(ArgumentsInvalid) as err:
        run(ValidateArguments(max_members=100), call_of(wide))
    assert "mcp.max_argument_members" in err.value.reasons[0]  # names the key that raises it
    # counted before the schema: an extra key, which the schema refuses, is refused by the count
    with pytest.raises(ArgumentsInvalid) as err:
        run(ValidateArguments(max_members=3), call_of({f"k{i}": i for i in range(4)}))
    assert "max_argument_members" in err.value.reasons[0]


def test_a_prompts_arguments_are_bounded_too() -> None:
    """A prompt's arguments reach the policy's input and the redaction as a tool's do."""
    prompt = CallContext(
        principal=LOCAL, kind="prompts/get", target="p", arguments={f"k{i}": "v" for i in range(5)}
    )
    assert run(ValidateArguments(max_members=5), prompt) == [prompt]
    with pytest.raises(ArgumentsInvalid):
        run(ValidateArguments(max_members=4), prompt)


def test_a_schema_ref_to_a_file_of_the_gateways_host_is_not_read(tmp_path: Path) -> None:
    """Attack: an approved inputSchema (pinned on first use in tofu mode) whose ``$ref`` names
    a JSON file of the gateway's host. jsonschema's default registry read it (``urlopen``):
    the refusal quoted it (``'x' is not one of ['<what the file holds>']``) and arguments that
    matched it passed, an oracle for the host's files. A ``$ref`` resolves within the schema
    only now: the call is refused, naming the ref, nothing of the file in it."""
    held = tmp_path / "held.json"
    held.write_text(json.dumps({"enum": ["TOPSECRET-4242"]}))
    schema = {"type": "object", "properties": {"a": {"$ref": held.as_uri()}}}
    for value in ("guess", "TOPSECRET-4242"):
        with pytest.raises(ArgumentsInvalid) as err:
            run(ValidateArguments(), call_of({"a": value}, schema=schema))
        assert "TOPSECRET" not in f"{err.value.message} {err.value.reasons}"
        assert "$ref" in err.value.message


def test_refs_within_the_schema_still_resolve() -> None:
    schema = {
        "type": "object",
        "$defs": {"count": {"type": "integer"}},
        "properties": {"n": {"$ref": "#/$defs/count"}},
    }
    assert run(ValidateArguments(), call_of({"n": 1}, schema=schema))
    with pytest.raises(ArgumentsInvalid):
        run(ValidateArguments(), call_of({"n": "x"}, schema=schema))
