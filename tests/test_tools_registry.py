"""The tool registry: every failure becomes a readable ``ok=False`` result, never an exception."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from app.core import protocol as p
from app.core import wire
from app.tools import default_registry
from app.tools.registry import Tool, ToolError, ToolRegistry, ToolResult, validate_arguments

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
        "count": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number"},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
    "required": ["name"],
    "additionalProperties": False,
}


async def echo(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"got": arguments}


def make_registry(*extra: Tool) -> ToolRegistry:
    return ToolRegistry([Tool("echo", "Echo the arguments.", SCHEMA, echo), *extra])


def error_of(result: ToolResult) -> dict[str, Any]:
    assert result.ok is False
    error = result.output["error"]
    assert isinstance(error, dict)
    assert isinstance(error["message"], str) and error["message"]
    return error


# ---------------------------------------------------------------------------------------------------
# Successful calls
# ---------------------------------------------------------------------------------------------------


async def test_run_passes_arguments_and_fills_defaults() -> None:
    result = await make_registry().run("echo", '{"name": "ada", "count": 2}')
    assert result.ok is True
    assert result.call_name == "echo"
    assert result.output == {"got": {"name": "ada", "count": 2, "size": "small"}}
    assert result.elapsed_s >= 0.0
    assert result.error_type is None


async def test_output_json_is_compact_and_round_trips() -> None:
    result = await make_registry().run("echo", '{"name": "zoë", "tags": ["a"]}')
    text = result.output_json()
    assert json.loads(text) == result.output
    assert " " not in text  # compact separators
    assert "zoë" in text  # not escaped: fewer tokens for the model


async def test_integral_float_counts_as_integer() -> None:
    result = await make_registry().run("echo", '{"name": "a", "count": 3.0}')
    assert result.ok, result.output


# ---------------------------------------------------------------------------------------------------
# Failures become results
# ---------------------------------------------------------------------------------------------------


async def test_unknown_tool_lists_the_known_ones() -> None:
    result = await make_registry().run("reboot_server", "{}")
    error = error_of(result)
    assert error["type"] == "unknown_tool"
    assert "reboot_server" in error["message"] and "echo" in error["message"]
    assert result.call_name == "reboot_server"


@pytest.mark.parametrize("arguments", ["", "{", "{'name': 'a'}", '{"name": NaN}', "not json", "[" * 100_000])
async def test_invalid_json(arguments: str) -> None:
    error = error_of(await make_registry().run("echo", arguments))
    assert error["type"] == "invalid_json"
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(("arguments", "kind"), [("[1, 2]", "array"), ("null", "null"), ('"x"', "string")])
async def test_arguments_must_be_an_object(arguments: str, kind: str) -> None:
    error = error_of(await make_registry().run("echo", arguments))
    assert error["type"] == "invalid_arguments"
    assert kind in error["message"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{}", "name is required"),
        ('{"name": 5}', "name must be string, not integer"),
        ('{"name": "a", "count": true}', "count must be integer, not boolean"),
        ('{"name": "a", "count": 2.5}', "count must be integer, not number"),
        ('{"name": "a", "count": 9}', "count must be at most 5"),
        ('{"name": "a", "count": 0}', "count must be at least 1"),
        ('{"name": "a", "ratio": "1"}', "ratio must be number, not string"),
        ('{"name": "a", "urgent": 1}', "urgent must be boolean, not integer"),
        ('{"name": "a", "size": "huge"}', "size must be one of small, large"),
        ('{"name": "abcdefghijk"}', "name must be at most 10 characters, not 11"),
        ('{"name": "a", "colour": "red"}', "colour is not a known parameter"),
        ('{"name": "a", "tags": ["x", 2]}', "tags[1] must be string"),
        ('{"name": "a", "tags": ["x", "y", "z"]}', "tags must have at most 2 items"),
    ],
)
async def test_schema_violations(arguments: str, expected: str) -> None:
    calls: list[dict[str, Any]] = []

    async def record(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {}

    registry = ToolRegistry([Tool("echo", "Echo.", SCHEMA, record)])
    error = error_of(await registry.run("echo", arguments))
    assert error["type"] == "invalid_arguments"
    assert expected in error["message"]
    assert calls == []  # the handler never sees arguments that break the schema


async def test_several_violations_are_reported_together() -> None:
    error = error_of(await make_registry().run("echo", '{"count": 0, "size": "huge"}'))
    assert "name is required" in error["message"]
    assert "count must be at least 1" in error["message"]
    assert "size must be one of" in error["message"]


def test_validator_accepts_conforming_values_and_enum_is_type_strict() -> None:
    assert validate_arguments({"name": "a", "size": "large", "tags": []}, SCHEMA) == []
    schema = {"type": "object", "properties": {"n": {"enum": [1, "1"]}}}
    assert validate_arguments({"n": 1}, schema) == []
    assert validate_arguments({"n": True}, schema) != []  # True == 1 in Python, not in JSON


async def test_handler_exception_becomes_tool_failed(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(arguments: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("database is on fire")

    registry = ToolRegistry([Tool("broken", "Fails.", {"type": "object"}, broken)])
    error = error_of(await registry.run("broken", "{}"))
    assert error["type"] == "tool_failed"
    assert "RuntimeError: database is on fire" in error["message"]
    assert "database is on fire" in caplog.text  # the traceback is logged for the developers


async def test_tool_error_keeps_its_type_and_message() -> None:
    async def refuses(arguments: dict[str, Any]) -> dict[str, Any]:
        raise ToolError("disk_full", "The disk is full.")

    registry = ToolRegistry([Tool("refuses", "Refuses.", {"type": "object"}, refuses)])
    result = await registry.run("refuses", "{}")
    assert error_of(result) == {"type": "disk_full", "message": "The disk is full."}
    assert result.error_type == "disk_full"


async def test_timeout() -> None:
    async def slow(arguments: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    registry = ToolRegistry([Tool("slow", "Slow.", {"type": "object"}, slow, timeout_s=0.05)])
    started = time.monotonic()
    result = await registry.run("slow", "{}")
    error = error_of(result)
    assert error["type"] == "timeout"
    assert "0.05 seconds" in error["message"]
    assert time.monotonic() - started < 1.0
    assert 0.04 <= result.elapsed_s < 1.0


async def test_timeout_error_raised_by_the_handler_is_a_failure_not_a_timeout() -> None:
    async def upstream_timeout(arguments: dict[str, Any]) -> dict[str, Any]:
        raise TimeoutError("ticket system did not answer")

    registry = ToolRegistry([Tool("t", "T.", {"type": "object"}, upstream_timeout)])
    error = error_of(await registry.run("t", "{}"))
    assert error["type"] == "tool_failed"
    assert "ticket system did not answer" in error["message"]


@pytest.mark.parametrize("output", [["a list"], {"value": float("nan")}, {"value": object()}])
async def test_output_that_is_not_a_json_object_is_refused(output: Any) -> None:
    async def bad(arguments: dict[str, Any]) -> Any:
        return output

    registry = ToolRegistry([Tool("bad", "Bad.", {"type": "object"}, bad)])
    result = await registry.run("bad", "{}")
    assert error_of(result)["type"] == "invalid_output"
    json.loads(result.output_json())  # the error itself is always sendable


async def test_cancelling_the_caller_still_cancels() -> None:
    started = asyncio.Event()

    async def waits(arguments: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(5)
        return {}

    registry = ToolRegistry([Tool("waits", "Waits.", {"type": "object"}, waits)])
    task = asyncio.create_task(registry.run("waits", "{}"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_two_calls_run_concurrently() -> None:
    async def nap(arguments: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"slept": True}

    registry = ToolRegistry(
        [Tool("nap_a", "Nap.", {"type": "object"}, nap), Tool("nap_b", "Nap.", {"type": "object"}, nap)]
    )
    started = time.monotonic()
    first, second = await asyncio.gather(registry.run("nap_a", "{}"), registry.run("nap_b", "{}"))
    elapsed = time.monotonic() - started
    assert first.ok and second.ok
    assert 0.3 <= elapsed < 0.5, f"two 0.3 s calls took {elapsed:.3f} s: they did not overlap"


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------


def test_duplicate_name_is_refused() -> None:
    registry = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Tool("echo", "Another echo.", {"type": "object"}, echo))
    assert registry.names() == ["echo"]


@pytest.mark.parametrize("name", ["", "has space", "dot.name", "x" * 65, "ünï"])
def test_bad_tool_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="tool name"):
        Tool(name, "Bad.", {"type": "object"}, echo)


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}},  # unsupported
        {"type": "array"},  # tool arguments are always an object
        {"type": "object", "properties": {"a": {"type": "text"}}},  # no such JSON type
        {"type": "object", "required": "a"},
    ],
)
def test_schemas_the_validator_cannot_enforce_are_refused(parameters: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Tool("t", "T.", parameters, echo)


@pytest.mark.parametrize("timeout_s", [0, -1, float("inf"), float("nan")])
def test_bad_timeouts_are_refused(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Tool("t", "T.", {"type": "object"}, echo, timeout_s=timeout_s)


async def test_schema_is_copied_at_construction() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    registry = ToolRegistry([Tool("t", "T.", schema, echo)])
    schema["required"].append("b")
    assert (await registry.run("t", '{"a": "x"}')).ok
    spec = registry.specs()[0]
    assert spec.parameters["required"] == ["a"]


# ---------------------------------------------------------------------------------------------------
# The real tools as session tools
# ---------------------------------------------------------------------------------------------------


def test_default_registry_specs_validate_as_realtime_session_tools(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    pydantic = pytest.importorskip("pydantic")
    from openai.types.realtime import RealtimeClientEvent

    registry = default_registry(outbox_dir=tmp_path / "outbox")
    specs = registry.specs()
    assert sorted(spec.name for spec in specs) == [
        "create_ticket",
        "get_ticket_status",
        "request_human",
        "search_knowledge_base",
    ]
    assert all(isinstance(spec, p.ToolSpec) for spec in specs)
    event = wire.write(
        p.SessionUpdate(p.Session(instructions="You are the IT helpdesk.", tools=tuple(specs)))
    )
    model = pydantic.TypeAdapter(RealtimeClientEvent).validate_python(event)
    tools = model.session.tools
    assert tools is not None
    assert [(tool.type, tool.name) for tool in tools] == [("function", spec.name) for spec in specs]
    for tool, spec in zip(tools, specs, strict=True):
        assert tool.parameters == spec.parameters
        assert tool.description
    assert not (tmp_path / "outbox").exists()  # building the registry writes nothing


def test_only_keeps_the_allowed_tools_in_their_order(tmp_path: Path) -> None:
    registry = default_registry(outbox_dir=tmp_path)
    assert registry.only(["create_ticket"]).names() == ["create_ticket"]
    assert registry.only(["nonexistent", "search_knowledge_base"]).names() == ["search_knowledge_base"]
    assert len(registry.only([])) == 0
    assert len(registry) == 4  # the original is untouched
