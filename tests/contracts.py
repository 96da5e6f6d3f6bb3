"""Replays recorded request/response contracts to a connector through :class:`httpx.MockTransport`.

A recording (``tests/data/contracts/<system>/<name>.json``) is one exchange, written from the
system's public API reference::

    {
      "reference": "where in the public reference this exchange is documented",
      "request": {
        "method": "GET",
        "path": "/api/now/table/incident",
        "query": {"sysparm_limit": "1"},           # each must be present with this exact value
        "headers": {"Authorization": "Basic ..."},  # case-insensitive names; "<any>": present
        "body": {"short_description": "..."}        # JSON subset: every key listed must match
      },
      "response": {"status": 200, "headers": {...}, "body": {...}}   # or "body_text": "raw"
    }

Body and query values may be ``"<any>"`` (present, any value) or ``"<absent>"`` (must not be
there). A request that matches no unused recording fails the test (the handler raises
:class:`ContractMismatch`, which no connector catches, and :meth:`Replay.check` raises it again), and
:meth:`Replay.check` also fails when a recording was never asked for, so a contract binds both sides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["CONTRACTS", "ContractMismatch", "Recording", "Replay", "load", "matches"]

CONTRACTS = Path(__file__).resolve().parent / "data" / "contracts"
ANY = "<any>"
ABSENT = "<absent>"


class ContractMismatch(AssertionError):
    """A connector sent a request that no recording documents."""


@dataclass(frozen=True)
class Recording:
    name: str
    request: Mapping[str, Any]
    response: Mapping[str, Any]


def load(system: str, name: str) -> Recording:
    path = CONTRACTS / system / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data.get("reference"), f"{path} does not say which public reference it was written from"
    return Recording(name=name, request=data["request"], response=data["response"])


def _subset(expected: Any, actual: Any, where: str) -> str | None:
    """Why ``actual`` does not carry ``expected``; None when it does."""
    if expected == ANY:
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if value == ABSENT:
                if key in actual:
                    return f"{where}.{key}: must be absent, got {actual[key]!r}"
                continue
            if key not in actual:
                return f"{where}.{key}: missing"
            why = _subset(value, actual[key], f"{where}.{key}")
            if why:
                return why
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{where}: expected {expected!r}, got {actual!r}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            why = _subset(want, got, f"{where}[{index}]")
            if why:
                return why
        return None
    return None if expected == actual else f"{where}: expected {expected!r}, got {actual!r}"


def matches(recorded: Mapping[str, Any], request: httpx.Request) -> str | None:
    """Why ``request`` is not the recorded one; None when it is."""
    if request.method != recorded["method"]:
        return f"method {request.method} is not {recorded['method']}"
    if request.url.path != recorded["path"]:
        return f"path {request.url.path} is not {recorded['path']}"
    query = request.url.params
    for name, value in recorded.get("query", {}).items():
        if value == ABSENT:
            if name in query:
                return f"query {name} must be absent"
        elif name not in query:
            return f"query {name} missing"
        elif value != ANY and query.get_list(name) != [value]:
            return f"query {name}={query.get_list(name)!r}, expected {value!r}"
    for name, value in recorded.get("headers", {}).items():
        got = request.headers.get(name)
        if value == ABSENT:
            if got is not None:
                return f"header {name} must be absent"
        elif got is None:
            return f"header {name} missing"
        elif value != ANY and got != value:
            return f"header {name}={got!r}, expected {value!r}"
    if "body" in recorded:
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            return "body is not JSON"
        return _subset(recorded["body"], body, "body")
    return None


@dataclass
class Replay:
    """The recordings one test allows, each answered once (in order for the same request)."""

    recordings: list[Recording]
    used: list[int] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, system: str, names: Iterable[str]) -> Replay:
        return cls([load(system, name) for name in names])

    def handler(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        reasons = []
        for index, recording in enumerate(self.recordings):
            if index in self.used:
                continue
            why = matches(recording.request, request)
            if why is None:
                self.used.append(index)
                return _response(recording.response)
            reasons.append(f"  {recording.name}: {why}")
        problem = f"no recording answers {request.method} {request.url}:\n" + "\n".join(
            reasons or ["  (none left)"]
        )
        self.mismatches.append(problem)
        raise ContractMismatch(problem)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def check(self) -> None:
        """Fails when a request matched nothing or a recording was never asked for."""
        if self.mismatches:
            raise ContractMismatch("\n".join(self.mismatches))
        unused = [r.name for i, r in enumerate(self.recordings) if i not in self.used]
        if unused:
            raise ContractMismatch(f"recordings never requested: {unused}")


def _response(recorded: Mapping[str, Any]) -> httpx.Response:
    headers = dict(recorded.get("headers", {}))
    if "body_text" in recorded:
        return httpx.Response(
            recorded["status"], headers=headers, content=str(recorded["body_text"]).encode()
        )
    if "body" in recorded:
        headers.setdefault("Content-Type", "application/json")
        return httpx.Response(
            recorded["status"], headers=headers, content=json.dumps(recorded["body"]).encode()
        )
    return httpx.Response(recorded["status"], headers=headers)
