"""The offline server's footprint: how long it takes to start, and how much memory it keeps.

The real server runs alone as a child process (``python -m app serve`` on a free port, the token in
the environment, as the app's launcher starts it). Per run:

- start-up: wall time from starting the process to its ``ready`` line, and to a WebSocket client's
  ``session.created`` (the server can take a call), with each loading step timed from its progress
  lines as they arrive on the pipe, and the resident memory (VmRSS) read as each line arrives;
- memory idle: VmRSS and PSS (``smaps_rollup``) a few seconds after ready, one session connected
  and nobody talking, with the resident memory grouped by mapping (anonymous memory, each shared
  library, each model file), so what dominates shows;
- memory after one reply: the same once the session has asked "I forgot my password" as a typed
  message and the spoken answer has ended (``response.done``), plus the peak (VmHWM).

One more start under ``python -X importtime`` ranks the heaviest top-level imports (cumulative
microseconds; an import done inside a function counts as top-level, as the loader does it then).
The articles' vectors are cached in the user cache folder, so every run but a machine's first
loads them from there; ``--empty-cache`` gives each run an empty one (``XDG_CACHE_HOME``), as on a
first start, when every article is embedded. Linux only (it reads /proc).

    python -m bench.server_footprint [--runs 3] [--settle 3] [--empty-cache]
                                     [--out bench/results/server_footprint.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.localmodel.launcher import READY_LINE, TOKEN_ENV, URL_PREFIX
from bench.stats import machine, summary

REQUEST = "I forgot my password"
START_TIMEOUT_S = 180.0
REPLY_TIMEOUT_S = 60.0
IMPORTS_SHOWN = 15
MAPPINGS_SHOWN = 15
# Before the first progress line: the interpreter and the imports the serve command makes.
IMPORTS_STAGE = "interpreter and imports"
BETWEEN_STEPS_STAGE = "loading, outside the steps"
AFTER_LOADING_STAGE = "listening (server started, ready)"

_STEP = re.compile(r"^loading (?P<what>.+?)(?::\s*(?P<outcome>done|unavailable)\b.*|\.\.\.)$")
_IMPORT = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\|( *)(\S+)\s*$")
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+\s")


@dataclass(frozen=True)
class Line:
    """One line of the server's stdout: seconds since the process started, the text, VmRSS then."""

    at_s: float
    text: str
    rss_kb: int | None = None


@dataclass
class Stage:
    name: str
    seconds: float
    starts_at_s: float = 0.0
    rss_mb: float | None = None  # at the stage's end
    rss_added_mb: float | None = None  # None for steps that loaded side by side: not theirs alone
    side_by_side: bool = False


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def _grown_kb(before: Line, after: Line) -> int | None:
    if before.rss_kb is None or after.rss_kb is None:
        return None
    return after.rss_kb - before.rss_kb


def stages(lines: list[Line]) -> list[Stage]:
    """Start-up cut into stages by the server's progress lines, in the order they began.

    Before the first line: the interpreter and the imports of the serve command. Each loading step
    runs from ``loading X...`` to ``loading X: done ...`` (or ``: unavailable ...``); steps may
    overlap when they load side by side, and then what each added to the memory is not known.
    The rest of the loading, outside every step, is :data:`BETWEEN_STEPS_STAGE` (imports and work
    the loader does between steps); from ``loaded in`` to ``ready`` the server binds its socket.
    """
    if not lines:
        return []
    first = lines[0]
    found = [Stage(IMPORTS_STAGE, first.at_s, 0.0, _mb(first.rss_kb), _mb(first.rss_kb))]
    open_steps: dict[str, Line] = {}
    spans: list[tuple[float, float]] = []
    steps_kb: int | None = 0
    loaded: Line | None = None
    ready: Line | None = None
    for line in lines[1:]:
        step = _STEP.match(line.text)
        if step is not None and step.group("outcome") is None:
            open_steps[step.group("what")] = line
        elif step is not None:
            what = step.group("what")
            # "loading end-of-turn model: unavailable" ends "loading end-of-turn model (...)...".
            name = next((n for n in reversed(open_steps) if n == what or n.startswith(what)), None)
            if name is None:
                continue
            began = open_steps.pop(name)
            grown = _grown_kb(began, line)
            steps_kb = None if grown is None or steps_kb is None else steps_kb + grown
            label = name if step.group("outcome") == "done" else f"{name} (unavailable)"
            found.append(Stage(label, line.at_s - began.at_s, began.at_s, _mb(line.rss_kb), _mb(grown)))
            spans.append((began.at_s, line.at_s))
        elif line.text.startswith("loaded in") and loaded is None:
            loaded = line
        elif line.text.strip() == READY_LINE:
            ready = line
            break
    for index, stage in enumerate(found[1:]):  # the steps, in the order of spans
        own_start, own_end = spans[index]
        stage.side_by_side = any(
            other != index and start < own_end and own_start < end for other, (start, end) in enumerate(spans)
        )
        if stage.side_by_side:
            stage.rss_added_mb = None
    if loaded is not None:
        covered, reach = 0.0, first.at_s
        for span_start, span_end in sorted(spans):  # the union of the steps' spans
            covered += max(0.0, span_end - max(span_start, reach))
            reach = max(reach, span_end)
        loading_kb = _grown_kb(first, loaded)
        # What the steps added cannot be told apart when they overlap: then the rest is unknown too.
        rest_kb = None if loading_kb is None or steps_kb is None or _overlap(spans) else loading_kb - steps_kb
        found.append(
            Stage(
                BETWEEN_STEPS_STAGE,
                loaded.at_s - first.at_s - covered,
                first.at_s,
                _mb(loaded.rss_kb),
                _mb(rest_kb),
            )
        )
        if ready is not None:
            found.append(
                Stage(
                    AFTER_LOADING_STAGE,
                    ready.at_s - loaded.at_s,
                    loaded.at_s,
                    _mb(ready.rss_kb),
                    _mb(_grown_kb(loaded, ready)),
                )
            )
    for stage in found:
        stage.seconds = round(stage.seconds, 3)
        stage.starts_at_s = round(stage.starts_at_s, 3)
    return found


def _overlap(spans: list[tuple[float, float]]) -> bool:
    ordered = sorted(spans)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))


def heaviest_imports(importtime: str, count: int = IMPORTS_SHOWN) -> list[dict[str, Any]]:
    """The top-level imports of ``python -X importtime`` output, heaviest (cumulative) first.

    A top-level import is one made at the outermost level: the module itself or one a function
    imported when it ran; nested ones are inside its cumulative time. A module imported at the top
    twice (never, by Python's cache, but logs can be concatenated) is summed.
    """
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for text in importtime.splitlines():
        match = _IMPORT.match(text.strip("\n"))
        if match is None or match.group(3) != " ":
            continue  # a header, another message, or a nested import
        module = match.group(4)
        totals[module][0] += int(match.group(1))
        totals[module][1] += int(match.group(2))
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    return [{"module": name, "cumulative_us": cum, "self_us": own} for name, (own, cum) in ranked[:count]]


def import_total_us(importtime: str) -> int:
    """All the import time of a run: the sum of the top-level imports' cumulative times."""
    total = 0
    for text in importtime.splitlines():
        match = _IMPORT.match(text)
        if match is not None and match.group(3) == " ":
            total += int(match.group(2))
    return total


def mapping_group(path: str) -> str:
    """What a mapping of /proc/<pid>/smaps counts toward: a file by its name, else its kind."""
    if not path:
        return "anonymous (thread arenas, large allocations)"
    if path.startswith("["):
        return "[heap]" if path == "[heap]" else "other kernel mappings (stack, vdso...)"
    name = path.rsplit("/", 1)[-1].removesuffix(" (deleted)")
    # Shared libraries keep their version out of the name (libavcodec-1a2b3c.so.61.19.100).
    so = re.match(r"^(.+?\.so)(?:\.[0-9.]+)?$", name)
    return so.group(1) if so else name


def rss_by_mapping(smaps: str, count: int = MAPPINGS_SHOWN) -> list[dict[str, Any]]:
    """Resident and proportional memory (MB) per :func:`mapping_group`, largest first."""
    rss: dict[str, int] = defaultdict(int)
    pss: dict[str, int] = defaultdict(int)
    group = ""
    for text in smaps.splitlines():
        if _MAPPING.match(text):
            parts = text.split(maxsplit=5)
            group = mapping_group(parts[5].strip() if len(parts) > 5 else "")
        elif text.startswith("Rss:"):
            rss[group] += int(text.split()[1])
        elif text.startswith("Pss:"):
            pss[group] += int(text.split()[1])
    ranked = sorted(rss, key=lambda name: -rss[name])
    return [
        {"mapping": name, "rss_mb": round(rss[name] / 1024, 1), "pss_mb": round(pss[name] / 1024, 1)}
        for name in ranked[:count]
    ]


def _status_kb(pid: int, *fields: str) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process is gone
        return found
    for row in text.splitlines():
        key, _, value = row.partition(":")
        if key in fields:
            found[key] = int(value.split()[0])
    return found


def _pss_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # an older kernel, or not ours to read
        return None
    for row in text.splitlines():
        if row.startswith("Pss:"):
            return int(row.split()[1])
    return None


def memory(pid: int) -> dict[str, Any]:
    """The process's memory now, in MB: resident, proportional, peak resident, and by mapping."""
    status = _status_kb(pid, "VmRSS", "VmHWM", "RssAnon", "RssFile")
    pss = _pss_kb(pid)
    try:
        by_mapping = rss_by_mapping(Path(f"/proc/{pid}/smaps").read_text())
    except OSError:
        by_mapping = []
    return {
        "rss_mb": _mb(status.get("VmRSS")),
        "pss_mb": _mb(pss),
        "peak_rss_mb": _mb(status.get("VmHWM")),
        "rss_anonymous_mb": _mb(status.get("RssAnon")),
        "rss_file_mb": _mb(status.get("RssFile")),
        "by_mapping": by_mapping,
    }


TICKS = os.sysconf("SC_CLK_TCK")


def busy_cpu_s() -> float:
    """CPU seconds every process together has spent since boot, all cores (/proc/stat)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    ticks = [int(value) for value in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def process_cpu_s(pid: int) -> float:
    """CPU seconds ``pid`` has used, all its threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """``python -m app serve`` as a child, its stdout lines time-stamped as they arrive."""

    def __init__(
        self, token: str, python_options: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        self.token = token
        self.port = free_port()
        self.lines: list[Line] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self.url: str | None = None
        self.others_cpu_s: float | None = None  # what the rest of the machine used until ready
        self.started = time.monotonic()
        self._busy_before = busy_cpu_s()
        self.process = subprocess.Popen(
            [sys.executable, *python_options, "-m", "app", "serve", "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read_stdout, args=(self.process.stdout,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True).start()

    def _read_stdout(self, stream: IO[str] | None) -> None:
        for text in stream or ():
            at = time.monotonic() - self.started
            # Read as the line arrives: the memory the step just finished has taken.
            rss = _status_kb(self.process.pid, "VmRSS").get("VmRSS")
            line = Line(round(at, 4), text.rstrip("\n"), rss)
            self.lines.append(line)
            if line.text.startswith(URL_PREFIX):
                self.url = line.text[len(URL_PREFIX) :].strip()
            if line.text.strip() == READY_LINE:
                # Another program busy meanwhile slows start-up most when steps load side by side.
                self.others_cpu_s = busy_cpu_s() - self._busy_before - process_cpu_s(self.process.pid)
                self.ready.set()
        self.ready.set()  # ended without it: the waiter finds out

    def _read_stderr(self, stream: IO[str] | None) -> None:
        for text in stream or ():
            self.stderr.append(text.rstrip("\n"))

    def wait_ready(self) -> float:
        if not self.ready.wait(START_TIMEOUT_S) or self.url is None or self.process.poll() is not None:
            tail = [row for row in self.stderr if not row.startswith("import time:")][-5:]
            raise RuntimeError(f"the server did not get ready: {tail}")
        return self.lines[-1].at_s

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def _session(server: Server, settle: float) -> dict[str, Any]:
    """Connects right after ready, idles, asks once; memory idle and after the reply."""
    from websockets.asyncio.client import connect

    assert server.url is not None
    headers = {"Authorization": f"Bearer {server.token}"}
    async with connect(server.url, additional_headers=headers, max_size=None) as ws:

        async def until(kind: str, timeout: float) -> dict[str, Any]:
            async with asyncio.timeout(timeout):
                while True:
                    event: dict[str, Any] = json.loads(await ws.recv())
                    if event["type"] == "error":
                        raise RuntimeError(f"the server answered an error: {event}")
                    if event["type"] == kind:
                        return event
                    if event["type"] == "response.output_audio.delta":
                        audio_chunks.append(len(event["delta"]))
                        if first_audio[0] is None:
                            first_audio[0] = time.monotonic()

        audio_chunks: list[int] = []
        first_audio: list[float | None] = [None]
        await until("session.created", 30)
        session_s = time.monotonic() - server.started
        await asyncio.sleep(settle)
        idle = memory(server.process.pid)
        asked = time.monotonic()
        message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": REQUEST}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": message}))
        await ws.send(json.dumps({"type": "response.create"}))
        done = await until("response.done", REPLY_TIMEOUT_S)
        reply_s = time.monotonic() - asked
        status = done["response"]["status"]
        if status != "completed":
            raise RuntimeError(f"the reply ended {status}: {done['response'].get('status_details')}")
        await asyncio.sleep(settle)  # the server gives freed memory back once a response ends
        after = memory(server.process.pid)
    first = first_audio[0]
    return {
        "session_created_s": round(session_s, 3),
        "idle": idle,
        "after_reply": after,
        "reply": {
            "first_audio_ms": None if first is None else round(1000 * (first - asked)),
            "done_s": round(reply_s, 2),
            "transcript": _transcript(done),
            # base64 of 16-bit mono at 24 kHz: 4 characters per 3 bytes.
            "audio_s": round(sum(audio_chunks) * 3 / 4 / 2 / 24000, 2),
        },
    }


def _transcript(done: dict[str, Any]) -> str:
    """What the reply said: a wrong or empty answer means the figures measured something else."""
    parts = [
        str(part.get("transcript") or part.get("text") or "")
        for item in done["response"].get("output", [])
        for part in item.get("content", [])
    ]
    return " ".join(part for part in parts if part)


def one_run(settle: float, empty_cache: bool = False) -> dict[str, Any]:
    import secrets
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hv-footprint-cache-") as cache:
        server = Server(secrets.token_urlsafe(24), env={"XDG_CACHE_HOME": cache} if empty_cache else None)
        try:
            ready_s = server.wait_ready()
            session = asyncio.run(_session(server, settle))
        finally:
            server.stop()
    lines = server.lines
    return {
        "ready_line_s": round(ready_s, 3),
        # Cores the rest of the machine kept busy on average while the server started.
        "other_load_during_start": (
            None if server.others_cpu_s is None else round(max(0.0, server.others_cpu_s) / ready_s, 2)
        ),
        **session,
        "stages": [vars(stage) for stage in stages(lines)],
        "lines": [vars(line) for line in lines],
        "server_log": server.stderr[-20:],  # warnings such as a knowledge base folder not found
    }


def import_profile() -> dict[str, Any]:
    """One start under ``-X importtime`` (slower than a plain one, so timed apart), then stopped."""
    import secrets

    server = Server(secrets.token_urlsafe(24), ("-X", "importtime"))
    try:
        server.wait_ready()
    finally:
        server.stop()
    log = "\n".join(row for row in server.stderr if row.startswith("import time:"))
    return {"total_ms": round(import_total_us(log) / 1000), "heaviest": heaviest_imports(log)}


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


def stage_medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage's median start, length and resident memory added over the runs, in start order."""
    order: list[str] = []
    values: dict[tuple[str, str], list[float | None]] = defaultdict(list)
    side_by_side: set[str] = set()
    for run in runs:
        for stage in run["stages"]:
            if stage["name"] not in order:
                order.append(stage["name"])
            for key in ("starts_at_s", "seconds", "rss_added_mb"):
                values[stage["name"], key].append(stage[key])
            if stage["side_by_side"]:
                side_by_side.add(stage["name"])
    return [
        {"name": name}
        | {key: _median(values[name, key]) for key in ("starts_at_s", "seconds", "rss_added_mb")}
        | {"side_by_side": name in side_by_side}
        for name in order
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds after ready, and after the reply, before reading memory",
    )
    parser.add_argument("--no-importtime", action="store_true", help="skip the -X importtime start")
    parser.add_argument(
        "--empty-cache",
        action="store_true",
        help="each run with an empty user cache folder, as a first start",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/server_footprint.json"))
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("server_footprint: reads /proc; Linux only", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for index in range(args.runs):
        run = one_run(args.settle, args.empty_cache)
        runs.append(run)
        steps = ", ".join(f"{stage['name']} {stage['seconds']:.2f}" for stage in run["stages"])
        print(
            f"run {index + 1}: ready {run['ready_line_s']:.2f} s (session {run['session_created_s']:.2f} s); "
            f"RSS idle {run['idle']['rss_mb']} MB, after a reply {run['after_reply']['rss_mb']} MB; "
            f"other load {run['other_load_during_start']} cores; {steps}"
        )
    imports = None if args.no_importtime else import_profile()

    def across(*keys: str) -> dict[str, float]:
        values: list[float] = []
        for run in runs:
            value: Any = run
            for key in keys:
                value = value[key]
            if value is not None:
                values.append(float(value))
        return summary(values, 3)

    report: dict[str, Any] = {
        "benchmark": "server_footprint",
        "what": "the offline server alone: start to ready (s), memory idle and after one spoken reply (MB)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request": REQUEST,
        "empty_cache": args.empty_cache,
        "ready_line_s": across("ready_line_s"),
        "session_created_s": across("session_created_s"),
        "idle_rss_mb": across("idle", "rss_mb"),
        "idle_pss_mb": across("idle", "pss_mb"),
        "after_reply_rss_mb": across("after_reply", "rss_mb"),
        "after_reply_pss_mb": across("after_reply", "pss_mb"),
        "peak_rss_mb": across("after_reply", "peak_rss_mb"),
        "reply_first_audio_ms": across("reply", "first_audio_ms"),
        "other_load_during_start": across("other_load_during_start"),
        "stages": stage_medians(runs),
        "imports": imports,
        "runs": runs,
        "machine": machine(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"median: ready {report['ready_line_s']['p50']:.2f} s, session.created "
        f"{report['session_created_s']['p50']:.2f} s; RSS idle {report['idle_rss_mb']['p50']:.0f} MB "
        f"(PSS {report['idle_pss_mb'].get('p50', float('nan')):.0f}), after one reply "
        f"{report['after_reply_rss_mb']['p50']:.0f} MB (peak {report['peak_rss_mb']['p50']:.0f})"
    )
    for stage in report["stages"]:
        added = "" if stage["rss_added_mb"] is None else f", +{stage['rss_added_mb']:.0f} MB"
        added += " (side by side)" if stage["side_by_side"] else ""
        print(f"  {stage['name']}: {stage['seconds']:.2f} s from {stage['starts_at_s']:.2f} s{added}")
    top = runs[len(runs) // 2]["after_reply"]["by_mapping"][:6]
    print("  largest after a reply: " + ", ".join(f"{row['mapping']} {row['rss_mb']:.0f}" for row in top))
    if imports is not None:
        heaviest = ", ".join(
            f"{row['module']} {row['cumulative_us'] / 1000:.0f}" for row in imports["heaviest"][:6]
        )
        print(f"  imports {imports['total_ms']} ms in all; heaviest (ms): {heaviest}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
