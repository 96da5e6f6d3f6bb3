"""A long call with faults: the real app and its offline server for half an hour, measured from outside.

The app runs as a user runs it (``helpdesk-voice --headless``, no endpoint, so it starts and
supervises its embedded offline server) on the virtual devices. Spoken requests (espeak-ng) go into
the microphone one after another: plain questions, questions the user talks over 1.5 s into the
answer, and requests for a ticket. Meanwhile, on their own clock and whatever the conversation is
doing at that moment:

- every ``--kill-every`` minutes the offline server child is killed (SIGKILL), as a crash would;
- every ``--drop-every`` minutes the app's connection to it is torn down (``ss -K``), as a network
  stack or a sleeping laptop would.

What it reports:

- **turns**: every request, whether the assistant answered it (its first sound on the speaker
  within 20 s), and which faults struck while it was in flight. A lost turn is a request that
  got no answer.
- **tickets**: every ticket number the assistant spoke, and whether the outbox holds it at the end.
- **recovery**: after each fault, how long until the app answered again.
- **resources**: RSS and open files of the app and of the server child every 5 s; growth after the
  first ``--warmup`` minutes (the app's as a slope over the run, the server's across its lives).

    python -m bench.soak [--minutes 30] [--kill-every 5] [--drop-every 3] [--out bench/results/soak.json]
        [--app-log PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.echo_loop import REQUESTS, LoopRun, interruption, uninterrupted
from bench.stats import machine

TICKET_REQUESTS = [
    "please open a ticket, my monitor flickers all the time",
    "can you create a ticket, the docking station does not charge my laptop",
    "please raise a ticket, my keyboard is missing some keys",
    "I need a ticket, the projector in the meeting room has no signal",
]
TICKET_ID = re.compile(r"\bHD-\d{4,}\b")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Fault:
    kind: str  # "kill" or "drop"
    at: float
    done: bool = False
    detail: str = ""
    answered_again_s: float | None = None


@dataclass
class Sample:
    t: float
    app_rss_mb: float
    app_files: int
    server_pid: int | None
    server_rss_mb: float | None
    server_files: int | None


@dataclass
class Soak:
    run: LoopRun
    started: float
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def app_pid(self) -> int:
        assert self.run.app is not None
        return self.run.app.pid


def _rss_mb(pid: int) -> float | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * PAGE / 2**20


def _open_files(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def server_child(app_pid: int) -> int | None:
    """The offline server the app started: its child running ``serve``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == app_pid and b"serve" in cmdline:
            return int(entry)
    return None


def listening_port(pid: int) -> int | None:
    listing = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    return None


def sample(soak: Soak) -> None:
    while not soak.stop.wait(5.0):
        server = server_child(soak.app_pid)
        app_rss = _rss_mb(soak.app_pid)
        if app_rss is None:
            return  # the app is gone: the run will say so
        soak.samples.append(
            Sample(
                t=round(time.monotonic() - soak.started, 1),
                app_rss_mb=round(app_rss, 1),
                app_files=_open_files(soak.app_pid) or 0,
                server_pid=server,
                server_rss_mb=None if server is None else round(_rss_mb(server) or 0.0, 1),
                server_files=None if server is None else _open_files(server),
            )
        )


def strike(soak: Soak) -> None:
    """Carry out the faults at their times, whatever the conversation is doing."""
    for fault in soak.faults:
        if soak.stop.wait(max(0.0, soak.started + fault.at - time.monotonic())):
            return
        server = server_child(soak.app_pid)
        if server is None:
            fault.detail = "no server child running at that moment"
            continue
        if fault.kind == "kill":
            os.kill(server, signal.SIGKILL)
            fault.detail = f"killed server pid {server}"
        else:
            port = listening_port(server)
            result = subprocess.run(
                ["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"],
                capture_output=True,
                text=True,
                check=False,
            )
            torn = [line for line in result.stdout.splitlines() if "ESTAB" in line]
            fault.detail = f"tore down {len(torn)} connection(s) to port {port}"
        fault.done = True


def schedule(minutes: float, kill_every: float, drop_every: float) -> list[Fault]:
    faults = [Fault("kill", k * kill_every * 60) for k in range(1, int(minutes / kill_every) + 1)]
    drops = [Fault("drop", k * drop_every * 60) for k in range(1, int(minutes / drop_every) + 1)]
    # A drop that falls on a kill would tear down nothing: move it 30 s later.
    kills = {f.at for f in faults}
    for drop in drops:
        if drop.at in kills:
            drop.at += 30
    return sorted(faults + drops, key=lambda f: f.at)


def spoken_tickets(lines: list[str]) -> list[str]:
    return sorted({m for line in lines if line.startswith("assistant: ") for m in TICKET_ID.findall(line)})


def outbox_ids(data_dir: Path) -> tuple[list[str], list[str]]:
    from app.tools.tickets import TicketOutbox

    listing = TicketOutbox(data_dir / "outbox").list()
    return sorted(t.id for t in listing.tickets), [str(p) for p in listing.problems]


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    t = np.array([p[0] for p in points]) / 600.0
    y = np.array([p[1] for p in points])
    return round(float(np.polyfit(t, y, 1)[0]), 2)


def resources(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    late = [s for s in samples if s.t >= warmup_s]
    report: dict[str, Any] = {"samples": len(samples), "after_warmup": len(late)}
    if not late:
        return report
    report["app"] = {
        "rss_mb_first_after_warmup": late[0].app_rss_mb,
        "rss_mb_last": late[-1].app_rss_mb,
        "rss_mb_max": max(s.app_rss_mb for s in late),
        "rss_slope_mb_per_10min": slope_per_10min([(s.t, s.app_rss_mb) for s in late]),
        "open_files_min": min(s.app_files for s in late),
        "open_files_max": max(s.app_files for s in late),
        "open_files_last": late[-1].app_files,
    }
    # The server starts afresh after each kill: compare its lives at the same age, their last sample.
    lives: dict[int, list[Sample]] = {}
    for s in samples:
        if s.server_pid is not None and s.server_rss_mb:
            lives.setdefault(s.server_pid, []).append(s)
    report["server_lives"] = [
        {
            "pid": pid,
            "from_s": life[0].t,
            "to_s": life[-1].t,
            "rss_mb_last": life[-1].server_rss_mb,
            "rss_mb_max": max(s.server_rss_mb or 0.0 for s in life),
            "open_files_last": life[-1].server_files,
            "open_files_max": max(s.server_files or 0 for s in life),
        }
        for pid, life in lives.items()
    ]
    return report


def converse(soak: Soak, until: float) -> list[dict[str, Any]]:
    run = soak.run
    assert run.out is not None
    turns: list[dict[str, Any]] = []
    plain, tickets = iter(REQUESTS * 100), iter(TICKET_REQUESTS * 100)
    kinds = ["plain", "barge_in", "plain", "ticket"]
    index = 0
    while time.monotonic() < until and run.app is not None and run.app.poll() is None:
        kind = kinds[index % len(kinds)]
        index += 1
        text = next(tickets) if kind == "ticket" else next(plain)
        lines_before = len(run.out.lines)
        begin = time.monotonic()
        result = interruption(run, text) if kind == "barge_in" else uninterrupted(run, text)
        end = time.monotonic()
        struck = [
            f"{f.kind}@{f.at:.0f}s"
            for f in soak.faults
            if f.done and begin - 1.0 <= soak.started + f.at <= end
        ]
        turn = {
            "t": round(begin - soak.started, 1),
            "kind": kind,
            "request": text,
            "answered": bool(result.get("answered")),
            "faults_during": struck,
            "halted": result.get("halted"),
            "halt_ms": result.get("halt_ms"),
            "tickets_spoken": spoken_tickets(run.out.lines[lines_before:]),
            "transcript": [line[:160] for line in run.out.lines[lines_before:]],
        }
        turns.append(turn)
        for fault in soak.faults:
            recovered = fault.done and fault.answered_again_s is None and turn["answered"]
            if recovered and soak.started + fault.at <= begin:
                fault.answered_again_s = round(begin - (soak.started + fault.at), 1)
        print(json.dumps(turn), flush=True)
    return turns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every", type=float, default=5.0, help="minutes between server kills")
    parser.add_argument("--drop-every", type=float, default=3.0, help="minutes between connection drops")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes before resources must be flat")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument("--app-log", type=Path, help="keep the app's verbose log here, to look into a turn")
    args = parser.parse_args(argv)

    from app.testkit.rig import VirtualAudioRig, reinitialise_portaudio

    load_before = os.getloadavg()
    rig = VirtualAudioRig(prefix="soak")
    rig.start()
    reinitialise_portaudio()
    with tempfile.TemporaryDirectory(prefix="hv-soak-") as tmp:
        data_dir = Path(tmp)
        run = LoopRun(rig, data_dir)
        startup_s = run.start()
        soak = Soak(run, time.monotonic(), schedule(args.minutes, args.kill_every, args.drop_every))
        threads = [threading.Thread(target=f, args=(soak,), daemon=True) for f in (sample, strike)]
        for thread in threads:
            thread.start()
        try:
            turns = converse(soak, soak.started + args.minutes * 60)
        finally:
            soak.stop.set()
            for thread in threads:
                thread.join(10)
            app_alive = run.app is not None and run.app.poll() is None
            log = list(run.log.lines) if run.log is not None else []
            run.stop()
            rig.stop()
        filed, problems = outbox_ids(data_dir)
        if args.app_log is not None and (data_dir / "app.log").exists():
            args.app_log.write_bytes((data_dir / "app.log").read_bytes())

    spoken = sorted({t for turn in turns for t in turn["tickets_spoken"]})
    lost_turns = [t for t in turns if not t["answered"]]
    report: dict[str, Any] = {
        "machine": machine(load_before),
        "config": {
            "minutes": args.minutes,
            "kill_every_min": args.kill_every,
            "drop_every_min": args.drop_every,
            "warmup_min": args.warmup,
        },
        "startup_s": round(startup_s, 1),
        "app_alive_at_end": app_alive,
        "turns": {
            "total": len(turns),
            "answered": len(turns) - len(lost_turns),
            "lost": lost_turns,
            "struck_by_a_fault": sum(1 for t in turns if t["faults_during"]),
            "barge_ins_halted": sum(1 for t in turns if t["kind"] == "barge_in" and t["halted"]),
            "barge_ins": sum(1 for t in turns if t["kind"] == "barge_in"),
        },
        "tickets": {
            "spoken": spoken,
            "in_outbox": filed,
            "spoken_but_missing": sorted(set(spoken) - set(filed)),
            "outbox_problems": problems,
        },
        "faults": [vars(f) for f in soak.faults],
        "app_notices": [line for line in log if line.startswith("helpdesk-voice: ")][-40:],
        "resources": resources(soak.samples, args.warmup * 60),
        "all_turns": turns,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("turns", "tickets", "resources")}, indent=2))
    return 0 if not lost_turns and not report["tickets"]["spoken_but_missing"] and app_alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
