"""JSON objects to frozen dataclasses and back, driven by the dataclasses' type hints.

The realtime protocol's events are declared once, as dataclasses (:mod:`app.core.protocol`), and
both roles use them: the app reads server events and writes client events, the offline server reads
client events and writes server events. A field is declared in one place; :func:`read` and
:func:`write` follow its type hint, so parsing, building and mypy cannot drift apart.

A field may sit deeper in the JSON than in the dataclass (``ResponseCreated.response_id`` is
``response.id``): :func:`at` gives its path, a default, what a missing or null value reads as, and the
bounds a reader enforces. Errors name the field by its JSON path (``response.output[0].id``) and say
whether it was missing, of the wrong type or out of bounds, which is what a server answers with.

Every string read passes through :func:`~app.core.safe_text.printable`: whatever arrives may reach a
terminal, a log or a notification. Base64 audio is bytes, decoded and checked instead.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Final, Literal, TypeVar

from app.core.safe_text import printable

__all__ = ["Spec", "WireError", "at", "check", "event", "given", "kind", "read", "record", "write"]

T = TypeVar("T")
Problem = Literal["missing", "type", "value"]
_SPEC: Final = "wire"
_UNSET: Final[Any] = type("_Unset", (), {"__repr__": lambda self: "UNSET"})()


class WireError(ValueError):
    """A JSON value that does not fit its field: ``path`` names it, ``problem`` says how."""

    def __init__(self, path: str, message: str, problem: Problem, code: str | None = None) -> None:
        super().__init__(f"'{path}' {message}" if path else message)
        self.path = path
        self.message = message
        self.problem = problem
        self.code = code  # a more specific error code than the problem's, for a server to answer with


@dataclass(frozen=True, slots=True)
class Spec:
    """How one field sits in the JSON; see :func:`at`."""

    path: tuple[str, ...] = ()
    absent: Any = _UNSET
    keep_null: bool = False
    max_chars: int | None = None
    low: float | None = None
    high: float | None = None
    max_items: int | None = None
    whole: bool = False
    keep_empty: bool = False


def at(
    *path: str,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    kw_only: bool = False,
    absent: Any = _UNSET,
    keep_null: bool = False,
    max_chars: int | None = None,
    low: float | None = None,
    high: float | None = None,
    max_items: int | None = None,
    whole: bool = False,
    keep_empty: bool = False,
    compare: bool = True,
    shown: bool | None = None,
    hash: bool | None = None,
) -> Any:
    """A field whose JSON lives at ``path`` (default: its own name).

    ``absent`` is what a missing or null value reads as where the dataclass itself requires one;
    ``keep_null`` writes None as null instead of leaving the key out (``turn_detection: null`` turns
    detection off), ``keep_empty`` an empty array instead of nothing (``tools: []`` removes them);
    ``whole`` gives the field the entire JSON object, unread (for logs and tests). The rest are
    :func:`dataclasses.field`'s, ``shown=False`` keeping a field out of ``repr`` (audio).
    """
    spec = Spec(path, absent, keep_null, max_chars, low, high, max_items, whole, keep_empty)
    metadata = {_SPEC: spec}
    if isinstance(default, Mapping):  # a shared mutable default would leak between instances
        frozen = dict(default)
        default, default_factory = MISSING, lambda: copy.deepcopy(frozen)
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        kw_only=kw_only,
        compare=compare,
        repr=compare if shown is None else shown,
        hash=hash,
        metadata=metadata,
    )


@typing.dataclass_transform(frozen_default=True, field_specifiers=(at, dataclasses.field))
def record(cls: type[T]) -> type[T]:
    """A frozen dataclass whose :func:`at` fields type checkers understand (required unless defaulted)."""
    return dataclass(frozen=True, slots=True)(cls)


@typing.dataclass_transform(frozen_default=True, field_specifiers=(at, dataclasses.field))
def event(kind: str) -> Callable[[type[T]], type[T]]:
    """:func:`record` for a protocol event of type ``kind`` (its ``TYPE``, written first)."""

    def make(cls: type[T]) -> type[T]:
        made = record(cls)
        setattr(made, "TYPE", kind)  # noqa: B010 (a class attribute the base declares)
        return made

    return make


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    hint: Any
    spec: Spec
    required: bool  # no dataclass default


_PLANS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    if cls in _PLANS:
        return _PLANS[cls]
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        spec = f.metadata.get(_SPEC) or Spec()
        if not spec.path:
            spec = dataclasses.replace(spec, path=(f.name,))
        required = f.default is MISSING and f.default_factory is MISSING
        found.append(_Field(f.name, hints[f.name], spec, required))
    _PLANS[cls] = tuple(found)
    return _PLANS[cls]


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def kind(value: object) -> str:
    """A JSON value's type as an error message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def _nullable(hint: Any) -> bool:
    return hint is Any or (_is_union(hint) and type(None) in typing.get_args(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def read(cls: type[T], obj: object, where: str = "") -> T:
    """``obj`` (a decoded JSON object) as a ``cls``; raises :class:`WireError` naming the field."""
    if not isinstance(obj, Mapping):
        raise WireError(where, f"must be an object, not {kind(obj)}", "type")
    values: dict[str, Any] = {}
    for field in _fields(cls):
        spec = field.spec
        if spec.whole:
            values[field.name] = obj
            continue
        node: Mapping[str, Any] | None = obj
        path = where
        for key in spec.path[:-1]:
            path = _join(path, key)
            child = node.get(key) if node is not None else None
            if child is not None and not isinstance(child, Mapping):
                raise WireError(path, f"must be an object, not {kind(child)}", "type")
            node = child
            if node is None:
                break
        path = _join(path, spec.path[-1]) if node is not None else path
        value = None if node is None else node.get(spec.path[-1])
        if value is None:
            explicit_null = node is not None and spec.path[-1] in node
            if node is None and field.required and not _nullable(field.hint):
                raise WireError(path, "is required", "missing")
            if spec.absent is not _UNSET:
                values[field.name] = spec.absent
            elif not explicit_null and not field.required:
                pass  # missing: the dataclass's default
            elif _nullable(field.hint):
                values[field.name] = None
            elif explicit_null and typing.get_origin(field.hint) is tuple:
                values[field.name] = ()  # null for an array: none
            elif field.required:
                raise WireError(path, "is required", "missing")
            continue
        values[field.name] = _value(field.hint, value, path, spec)
    try:
        return cls(**values)
    except WireError as exc:  # a check of the class that names a field
        raise WireError(_join(where, exc.path), exc.message, exc.problem, exc.code) from None
    except (TypeError, ValueError) as exc:  # the class's own checks (__post_init__)
        raise WireError(where, f"is not valid: {exc}", "value") from None


def check(value: object) -> None:
    """Holds a dataclass built in code to the bounds a reader enforces; raises :class:`WireError`."""
    for field in _fields(type(value)):
        item = getattr(value, field.name)
        if item is not None and not field.spec.whole and not dataclasses.is_dataclass(item):
            _value(field.hint, _dump(item), field.name, field.spec)


def given(cls: type, obj: Mapping[str, Any]) -> frozenset[str]:
    """The fields of ``cls`` whose JSON ``obj`` has (null included): what a partial update changes."""
    names = set()
    for field in _fields(cls):
        node: Any = obj
        for key in field.spec.path[:-1]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and field.spec.path[-1] in node:
            names.add(field.name)
    return frozenset(names)


def _value(hint: Any, value: object, path: str, spec: Spec) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if _is_union(hint):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        for option in options:
            if _fits(option, value):
                return _value(option, value, path, spec)
        expected = " or ".join(_expected(option) for option in options)
        raise WireError(path, f"must be {expected}, not {kind(value)}", "type")
    if not _fits(hint, value):
        raise WireError(path, f"must be {_expected(hint)}, not {kind(value)}", "type")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(str(choice) for choice in typing.get_args(hint))
            raise WireError(path, f"must be one of {choices}, not {_short(value)!r}", "value")
        return value
    if hint is str:
        assert isinstance(value, str)
        if spec.max_chars is not None and len(value) > spec.max_chars:
            raise WireError(path, f"is {len(value)} characters long; the limit is {spec.max_chars}", "value")
        return printable(value)
    if hint is bytes:
        try:
            return base64.b64decode(typing.cast(str, value), validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise WireError(path, f"is not valid base64: {exc}", "value") from None
    if hint is int or hint is float:
        return _number(hint, value, path, spec)
    if origin is tuple:
        items = typing.cast(list[Any], value)
        _count(items, path, spec)
        return tuple(
            _value(typing.get_args(hint)[0], item, _join(path, i), spec) for i, item in enumerate(items)
        )
    if origin in (Mapping, dict):
        entries = typing.cast(Mapping[str, Any], value)
        _count(entries, path, spec)
        entry_hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {key: _value(entry_hint, entry, _join(path, key), spec) for key, entry in entries.items()}
    if dataclasses.is_dataclass(hint):
        return read(typing.cast(type, hint), value, path)
    return value  # bool


def _fits(hint: Any, value: object) -> bool:
    """Whether ``value`` has the JSON type ``hint`` wants (its bounds are checked later)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(type(value) is type(choice) for choice in typing.get_args(hint))
    if hint is str or hint is bytes:
        return isinstance(value, str)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int or hint is float:
        # A JSON boolean is an int to Python, never to a client; 3.0 is an integer to JSON.
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list)
    if origin in (Mapping, dict) or dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    return False


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is str or hint is bytes or origin is Literal:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    return "an array" if origin is tuple else "an object"


def _number(hint: Any, value: Any, path: str, spec: Spec) -> int | float:
    if not math.isfinite(value):
        raise WireError(path, "must be a finite number", "value")
    if hint is int and not float(value).is_integer():
        raise WireError(path, f"must be a whole number, not {value!r}", "value")
    number = int(value) if hint is int else float(value)
    if (spec.low is not None and number < spec.low) or (spec.high is not None and number > spec.high):
        kind = "a whole number" if hint is int else "a number"
        limits = "" if spec.low == spec.high else f" from {spec.low:g} to {spec.high:g}"
        wanted = f"{spec.low:g}" if spec.low == spec.high else f"{kind}{limits}"
        raise WireError(path, f"must be {wanted}, not {value!r}", "value")
    return number


def _count(values: Mapping[str, Any] | list[Any], path: str, spec: Spec) -> None:
    if spec.max_items is not None and len(values) > spec.max_items:
        raise WireError(path, f"has {len(values)} entries; the limit is {spec.max_items}", "value")


def _short(value: object, limit: int = 64) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write(value: object) -> dict[str, Any]:
    """A dataclass as its JSON object: ``type`` first (the class's ``TYPE``), then its fields.

    None is left out unless the field keeps nulls; a class may leave out more by naming fields in an
    ``omitted()`` method (turn detection writes only the fields of its own kind).
    """
    out: dict[str, Any] = {}
    kind = getattr(type(value), "TYPE", None)
    if kind is not None:
        out["type"] = kind
    omitted = getattr(value, "omitted", None)
    skip: frozenset[str] = omitted() if callable(omitted) else frozenset()
    for field in _fields(type(value)):
        item = getattr(value, field.name)
        if field.spec.whole or field.name in skip or (item is None and not field.spec.keep_null):
            continue
        if item == () and not field.spec.keep_empty:
            continue
        node = out
        for key in field.spec.path[:-1]:
            node = node.setdefault(key, {})
        node[field.spec.path[-1]] = _dump(item)
    return out


def _dump(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return write(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple | list):
        return [_dump(item) for item in value]
    if isinstance(value, Mapping):
        # A copy: a caller editing the event must not change the value behind it.
        return {key: _dump(item) for key, item in value.items()}
    return value
