"""Tools the realtime model may call, and the registry that runs them.

The model sends a tool call as a name plus a JSON string of arguments, and whatever comes back is
read by the model and usually spoken to the user. So :meth:`ToolRegistry.run` never raises: an
unknown name, arguments that are not JSON or break the schema, a crashing handler and a handler
that takes too long all become a :class:`ToolResult` with ``ok=False`` and a readable message,
which lets the model apologise or try again instead of the conversation dying.

The realtime API does not enforce a tool's parameter schema (there is no strict mode), so the
registry checks arguments itself with a small validator for the subset of JSON Schema the tools
use. A schema keyword outside that subset is refused when the tool is built, so a constraint can
never be silently skipped.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from app.core.protocol import ToolSpec

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Handler",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "validate_arguments",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 15.0
# The same rule as ToolSpec; checked here too so a bad name fails at registration, not at connect.
_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# Keywords that only describe, never constrain: the validator may ignore them.
_ANNOTATIONS: Final = frozenset({"description", "title", "default", "examples"})
_CONSTRAINTS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "items",
        "minItems",
        "maxItems",
    }
)
_JSON_TYPES: Final = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
_MAX_ERRORS: Final = 5  # enough for the model to fix its call, short enough to read


class ToolError(Exception):
    """Raised by a handler for a failure it understands, with a message meant for the model.

    ``error_type`` is a short machine-readable code; ``message`` should say what went wrong in a
    sentence the assistant could repeat to the user.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


# ---------------------------------------------------------------------------------------------------
# Schema subset validator
# ---------------------------------------------------------------------------------------------------


def _check_schema(schema: object, where: str) -> None:
    """Refuse schemas the validator cannot fully enforce (raises ValueError)."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where}: a schema must be an object")
    unknown = set(schema) - _ANNOTATIONS - _CONSTRAINTS
    if unknown:
        raise ValueError(f"{where}: unsupported schema keywords {sorted(unknown)}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for one in kinds:
        if one not in _JSON_TYPES:
            raise ValueError(f"{where}: unknown type {one!r}")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ValueError(f"{where}: 'properties' must be an object")
    for name, sub in properties.items():
        _check_schema(sub, f"{where}.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise ValueError(f"{where}: 'required' must be a list of names")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        _check_schema(extra, f"{where}.additionalProperties")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}[]")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise ValueError(f"{where}: 'enum' must be a list")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], int)):
            raise ValueError(f"{where}: {key!r} must be an integer")
    for key in ("minimum", "maximum"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], int | float)):
            raise ValueError(f"{where}: {key!r} must be a number")


def _type_matches(value: object, kind: str) -> bool:
    # bool is an int subclass in Python but a separate type in JSON.
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind == "integer":
        # JSON Schema counts 3.0 as an integer; JSON itself does not tell them apart.
        return isinstance(value, int) or value.is_integer()
    return True  # number


def _json_kind(value: object) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _type_matches(value, kind):
            return kind
    return type(value).__name__


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _validate(value: object, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    where = path or "arguments"
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_type_matches(value, one) for one in kinds):
            errors.append(f"{where} must be {' or '.join(kinds)}, not {_json_kind(value)}")
            return  # further checks would only repeat the type mismatch
    if "enum" in schema and not any(
        value == option and _json_kind(value) == _json_kind(option) for option in schema["enum"]
    ):
        options = ", ".join(str(option) for option in schema["enum"])
        errors.append(f"{where} must be one of {options}, not {_show(value)}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where} must be at most {schema['maxLength']} characters, not {len(value)}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where} must be at least {schema['minLength']} characters")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where} must be at least {schema['minimum']}, not {_show(value)}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where} must be at most {schema['maximum']}, not {_show(value)}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where} must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where} must have at least {schema['minItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                _validate(item, schema["items"], f"{where}[{index}]", errors)
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        prefix = f"{path}." if path else ""
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{prefix}{name} is required")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                _validate(item, properties[name], f"{prefix}{name}", errors)
            elif extra is False:
                allowed = ", ".join(properties) or "none"
                errors.append(f"{prefix}{name} is not a known parameter (allowed: {allowed})")
            elif isinstance(extra, Mapping):
                _validate(item, extra, f"{prefix}{name}", errors)


def validate_arguments(value: object, schema: Mapping[str, Any]) -> list[str]:
    """Readable violations of ``schema`` by ``value``; empty when it conforms."""
    errors: list[str] = []
    _validate(value, schema, "", errors)
    return errors


# ---------------------------------------------------------------------------------------------------
# Tools and results
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model can call: its spec plus the coroutine that does the work."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: Handler = field(compare=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name must match [A-Za-z0-9_-]{{1,64}}, not {self.name!r}")
        _check_schema(self.parameters, self.name)
        if self.parameters.get("type") != "object":
            raise ValueError(f"{self.name}: the parameters schema must have type 'object'")
        if (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise ValueError(f"{self.name}: timeout_s must be a positive number, not {self.timeout_s!r}")
        # A private copy, so a caller editing its dict later cannot change what is validated.
        object.__setattr__(self, "parameters", copy.deepcopy(dict(self.parameters)))

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, copy.deepcopy(dict(self.parameters)))


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one call; ``output`` is always a JSON-serialisable object."""

    call_name: str
    ok: bool
    output: dict[str, Any]
    elapsed_s: float

    def output_json(self) -> str:
        """The compact JSON sent back as the ``function_call_output``."""
        return json.dumps(self.output, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @property
    def error_type(self) -> str | None:
        error = self.output.get("error") if not self.ok else None
        return error.get("type") if isinstance(error, dict) else None


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON and no schema here expects.
    raise ValueError(f"{name} is not valid JSON")


def _with_defaults(arguments: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    # The schema is the one place an optional parameter's default is written down.
    filled = dict(arguments)
    for name, sub in schema.get("properties", {}).items():
        if name not in filled and isinstance(sub, Mapping) and "default" in sub:
            filled[name] = copy.deepcopy(sub["default"])
    return filled


class ToolRegistry:
    """The tools offered to the model, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if not isinstance(tool, Tool):
            raise TypeError(f"expected a Tool, got {type(tool).__name__}")
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [tool.spec() for tool in self._tools.values()]

    def only(self, names: Iterable[str]) -> ToolRegistry:
        """A registry with just the named tools (an admin may allow fewer); unknown names are skipped."""
        return ToolRegistry(self._tools[name] for name in names if name in self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    async def run(self, name: str, arguments_json: str) -> ToolResult:
        """Run one call. Never raises, except that cancelling the caller's task still cancels it."""
        started = time.monotonic()

        def result(ok: bool, output: dict[str, Any]) -> ToolResult:
            return ToolResult(name, ok, output, time.monotonic() - started)

        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return result(False, _error("unknown_tool", f"There is no tool named {name!r}. Tools: {known}."))
        try:
            arguments: object = json.loads(arguments_json, parse_constant=_reject_constant)
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"The arguments for {name} are not valid JSON: {exc}"
            return result(False, _error("invalid_json", message))
        if not isinstance(arguments, dict):
            message = f"The arguments for {name} must be a JSON object, not {_json_kind(arguments)}."
            return result(False, _error("invalid_arguments", message))
        problems = validate_arguments(arguments, tool.parameters)
        if problems:
            shown = "; ".join(problems[:_MAX_ERRORS])
            more = f" (and {len(problems) - _MAX_ERRORS} more)" if len(problems) > _MAX_ERRORS else ""
            return result(False, _error("invalid_arguments", f"Invalid arguments for {name}: {shown}{more}."))
        return await self._call(tool, _with_defaults(arguments, tool.parameters), result)

    async def _call(
        self,
        tool: Tool,
        arguments: dict[str, Any],
        result: Callable[[bool, dict[str, Any]], ToolResult],
    ) -> ToolResult:
        deadline = asyncio.timeout(tool.timeout_s)
        try:
            async with deadline:
                output = await tool.handler(arguments)
        except ToolError as exc:
            return result(False, _error(exc.error_type, exc.message))
        except TimeoutError as exc:
            # Only our own deadline is a timeout; a TimeoutError raised inside the handler is a failure.
            if deadline.expired():
                message = f"{tool.name} did not finish within {tool.timeout_s:g} seconds."
                return result(False, _error("timeout", message))
            return self._crashed(tool, exc, result)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # somebody cancelled us: the call must stop, not report
            return self._crashed(tool, exc, result)  # the handler cancelled something of its own
        except Exception as exc:
            return self._crashed(tool, exc, result)
        if not isinstance(output, dict):
            message = f"{tool.name} returned {type(output).__name__}, not an object."
            return result(False, _error("invalid_output", message))
        try:
            # Checked now, so output_json() can never fail later in the send path.
            json.dumps(output, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"{tool.name} returned data that is not JSON: {exc}"
            return result(False, _error("invalid_output", message))
        return result(True, output)

    @staticmethod
    def _crashed(
        tool: Tool, exc: BaseException, result: Callable[[bool, dict[str, Any]], ToolResult]
    ) -> ToolResult:
        _log.error("tool %s failed", tool.name, exc_info=exc)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return result(False, _error("tool_failed", f"{tool.name} failed: {detail}"))
