"""gateway.steps.argcheck: the quick check never passes what jsonschema refuses.

Every schema of the subset (and some just outside it) against many instances, under every
draft the check is compiled for: wherever the quick check says valid, jsonschema finds no
error; it says valid for the plain valid cases (or it would save nothing); schemas outside the
subset are not compiled. Through the step, a refused call keeps jsonschema's reasons."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from jsonschema import validators

from gateway.errors import ArgumentsInvalid
from gateway.steps.argcheck import DRAFTS, compile_check
from gateway.steps.arguments import ValidateArguments
from tests.steps.test_arguments import call_of, run

DIALECTS = [
    None,
    "http://json-schema.org/draft-04/schema#",
    "http://json-schema.org/draft-06/schema#",
    "http://json-schema.org/draft-07/schema#",
    "https://json-schema.org/draft/2019-09/schema",
    "https://json-schema.org/draft/2020-12/schema",
]
TYPES = ["object", "array", "string", "integer", "number", "boolean", "null"]
LEAVES: list[Any] = [
    *({"type": t} for t in TYPES),
    {"type": ["string", "null"]},
    {"type": ["integer", "number"], "description": "n"},
    {"type": "string", "format": "email", "title": "t", "default": "x", "examples": ["a"]},
    {"type": "array", "items": {"type": "integer"}},
    {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
    {},
    {"type": "integer", "maximum": 5},  # outside the subset
    {"enum": ["a", "b"]},  # outside
]
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -7,
    2**70,
    1.0,
    1.5,
    float("nan"),
    "",
    "x",
    "a@b.c",
    [],
    [1, 2],
    ["a", 1],
    [{"k": "v"}],
    [{"k": 1}],
    {},
    {"k": "v"},
    {"k": None},
]


def _schemas(rng: random.Random) -> list[Any]:
    out: list[Any] = []
    for _ in range(300):
        props = {f"p{i}": rng.choice(LEAVES) for i in range(rng.randint(0, 3))}
        schema: dict[str, Any] = {"type": rng.choice(["object", "object", ["object", "null"], None])}
        if schema["type"] is None:
            del schema["type"]
        if props:
            schema["properties"] = props
            if rng.random() < 0.7:
                schema["required"] = rng.sample(sorted(props), rng.randint(1, len(props)))
        extra = rng.choice([None, True, False, {"type": "string"}, {"type": "integer", "minimum": 0}])
        if extra is not None:
            schema["additionalProperties"] = extra
        out.append(schema)
    return out


def _instances(schema: Any, rng: random.Random) -> list[Any]:
    names = [*schema.get("properties", {}), "other"]
    out: list[Any] = list(VALUES)
    for _ in range(40):
        out.append({n: rng.choice(VALUES) for n in rng.sample(names, rng.randint(0, len(names)))})
    return out


def test_the_quick_check_never_passes_what_jsonschema_refuses() -> None:
    rng = random.Random(16)
    compiled = passed = 0
    for schema, dialect in itertools.product(_schemas(rng), DIALECTS):
        if dialect is not None:
            schema = {**schema, "$schema": dialect}
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except Exception:  # noqa: BLE001 - a schema this draft refuses is not checked at all
            continue
        quick = compile_check(schema) if cls in DRAFTS else None
        if quick is None:
            continue
        compiled += 1
        validator = cls(schema)
        for value in _instances(schema, rng):
            if quick(value):
                passed += 1
                assert validator.is_valid(value), (schema, value)
    assert compiled > 1000 and passed > 10000


def test_plain_schemas_are_compiled_and_pass_plain_arguments() -> None:
    echo = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"message": {"type": "string", "description": "Message to echo"}},
        "required": ["message"],
        "additionalProperties": False,
    }
    quick = compile_check(echo)
    assert quick is not None and quick({"message": "hi"})
    assert not quick({}) and not quick({"message": 1}) and not quick({"message": "hi", "x": 1})
    assert compile_check(True) is not None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "maximum": 5},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "object", "properties": {"a": False}},
        {"type": "object", "properties": {"a": {"type": "string", "$schema": "x"}}},
        {"type": "array", "items": [{"type": "string"}]},
        {"type": "any"},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"type": "object", "additionalProperties": {"type": "string", "pattern": "a"}},
        "not a schema",
    ],
)
def test_schemas_outside_the_subset_are_left_to_jsonschema(schema: Any) -> None:
    assert compile_check(schema) is None


def test_a_refused_call_keeps_jsonschemas_reasons() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    step = ValidateArguments()
    assert run(step, call_of({"n": 3}, schema=schema))
    with pytest.raises(ArgumentsInvalid) as e:
        run(step, call_of({"n": 1.5, "m": 1}, schema=schema))
    assert e.value.reasons == ["arguments.n: 1.5 is not of type 'integer'"]
    assert run(step, call_of({"n": 2.0}, schema=schema))  # the check is stricter; jsonschema passes it


def test_items_are_checked_on_arrays_only_and_each_item_itself() -> None:
    """Mutation run of session 10: ``items`` read on a non-array value (an exception instead of
    jsonschema's verdict) and the items check given something else than the item (a schema of
    ``null`` items then passes any array) both survived."""
    either = compile_check({"type": ["array", "integer"], "items": {"type": "string"}})
    assert either is not None
    assert either(5) and either(["a"]) and not either([1])
    nulls = compile_check({"type": "array", "items": {"type": "null"}})
    assert nulls is not None
    assert nulls([None]) and not nulls([1]) and not nulls([None, "x"])


def test_a_schema_without_a_type_still_checks_the_arguments() -> None:
    """Its quick check passes anything that is not an object (``type`` unset): it must be asked
    about the call's arguments, not about something else (session 10's mutation run)."""
    schema = {"properties": {"n": {"type": "integer"}}}
    step = ValidateArguments()
    assert run(step, call_of({"n": 3}, schema=schema))
    with pytest.raises(ArgumentsInvalid):
        run(step, call_of({"n": "three"}, schema=schema))
