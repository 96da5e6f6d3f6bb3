"""CPU while the app listens and nobody speaks: the cost of running all day in the tray.

The app runs headless with no endpoint configured (so with its embedded offline server, as a user
meets it) on the virtual devices. Once it is listening, the benchmark waits a few seconds, then
reads the CPU time of the app's and the server's threads from /proc over a window and reports it
as a percentage of one core, per process and per thread (the capture and playback callbacks, the
engine loop), so a regression shows where it comes from. Linux only.

    python -m bench.idle_cpu [--seconds 30] [--runs 3] [--out bench/results/idle_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.stats import machine

GOAL_PERCENT = 3.0  # of one core, app and server together (docs: figures we hold ourselves to)
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_times(pid: int) -> dict[str, float]:
    """CPU seconds per thread of ``pid``, keyed ``"<tid> <name>"``."""
    times: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        times[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / TICKS
    return times


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(text) for text in found.stdout.split()]


def one_run(env: dict[str, str], mic: str, speaker: str, seconds: float, settle: float) -> dict[str, Any]:
    app = subprocess.Popen(
        [sys.executable, "-m", "app", "--headless", "--input-device", mic, "--output-device", speaker],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert app.stdout is not None
        ready = app.stdout.readline()
        if not ready.startswith("listening on"):
            raise RuntimeError(f"the app did not start listening: {ready!r}")
        time.sleep(settle)
        pids = {"app": app.pid, **{f"server {pid}": pid for pid in children(app.pid)}}
        before = {name: thread_times(pid) for name, pid in pids.items()}
        started = time.monotonic()
        time.sleep(seconds)
        after = {name: thread_times(pid) for name, pid in pids.items()}
        elapsed = time.monotonic() - started
    finally:
        app.terminate()
        app.wait(10)
    result: dict[str, Any] = {"seconds": round(elapsed, 1), "processes": {}}
    for name in pids:
        used = {tid: after[name][tid] - before[name].get(tid, 0.0) for tid in after[name]}
        busy = {tid: round(100 * cpu / elapsed, 2) for tid, cpu in used.items() if cpu > 0}
        result["processes"][name.split()[0]] = {
            "percent_of_one_core": round(100 * sum(used.values()) / elapsed, 2),
            "threads": dict(sorted(busy.items(), key=lambda item: -item[1])),
        }
    result["total_percent"] = round(sum(p["percent_of_one_core"] for p in result["processes"].values()), 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds after 'listening' before measuring"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/idle_cpu.json"))
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("idle_cpu: reads /proc; Linux only", file=sys.stderr)
        return 2

    from app.audio.virtual_rig import VirtualAudioRig

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with VirtualAudioRig() as rig:
        env = {**os.environ, **rig.env}
        for index in range(args.runs):
            run = one_run(env, rig.mic, rig.speaker, args.seconds, args.settle)
            runs.append(run)
            app_share = run["processes"]["app"]["percent_of_one_core"]
            print(
                f"run {index + 1}: app {app_share:.2f} %, app + server {run['total_percent']:.2f} % of a core"
            )
    totals = [run["total_percent"] for run in runs]
    apps = [run["processes"]["app"]["percent_of_one_core"] for run in runs]
    report = {
        "benchmark": "idle_cpu",
        "what": "CPU while listening with nobody speaking, app + embedded server, % of one core",
        "goal_percent": GOAL_PERCENT,
        "median_total_percent": round(statistics.median(totals), 2),
        "median_app_percent": round(statistics.median(apps), 2),
        "met_goal": statistics.median(totals) <= GOAL_PERCENT,
        "runs": runs,
        "machine": machine(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"median: app {report['median_app_percent']:.2f} %, "
        f"app + server {report['median_total_percent']:.2f} % (goal {GOAL_PERCENT} %) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
