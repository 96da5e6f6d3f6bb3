"""CPU while the app listens and nobody speaks: the cost of running all day in the tray.

The app runs headless with no endpoint configured (so with its embedded offline server, as a user
meets it) on the virtual devices. Once it is listening, the benchmark waits a few seconds, then
reads the CPU time of the app's and the server's threads from /proc over a window and reports it
as a percentage of one core, per process and per thread (the capture and playback callbacks, the
engine loop), so a regression shows where it comes from. Linux only.

Each run also measures the floor the same way, on the same devices: a bare ``sounddevice`` duplex
pair (input and output streams of 10 ms blocks, callbacks that do nothing), the least any
low-latency audio app pays to keep its streams open. The ratio of the app to that floor is the
figure to hold: at most 1.0, an idle app costs no more than an idle audio stream.

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

GOAL_RATIO = 1.0  # app and server together, to the bare duplex floor of the same run
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


def reaped_children_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s children that have ended (a helper it runs now and then)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


def process_name(pid: int) -> str:
    """``server`` for the embedded server (a Python child), else the child's command name."""
    command = Path(f"/proc/{pid}/comm").read_text().strip()
    return "server" if command.startswith("python") else command


def process_percent(pid: int, seconds: float) -> float:
    """CPU of every thread of ``pid`` over the next ``seconds``, in percent of one core."""
    before = sum(thread_times(pid).values())
    started = time.monotonic()
    time.sleep(seconds)
    return round(100 * (sum(thread_times(pid).values()) - before) / (time.monotonic() - started), 2)


def bare_duplex(mic: str, speaker: str) -> None:
    """The floor: an input and an output stream of 10 ms blocks doing nothing, until killed."""
    import sounddevice as sd

    from app.audio.devices import find_device
    from app.audio.streams import open_stream

    def ignore(*_: object) -> None:
        pass

    def silence(outdata: Any, *_: object) -> None:
        outdata.fill(0)

    streams = [
        open_stream("input", find_device(mic, "input"), ignore),
        open_stream("output", find_device(speaker, "output"), silence),
    ]
    for stream in streams:
        stream.start()
    print("running", flush=True)
    sd.sleep(10**9)


def floor_percent(env: dict[str, str], mic: str, speaker: str, seconds: float, settle: float) -> float:
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.idle_cpu", "--bare", mic, speaker],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bare.stdout is not None
        if bare.stdout.readline().strip() != "running":
            raise RuntimeError("the bare duplex streams did not start")
        time.sleep(settle)
        return process_percent(bare.pid, seconds)
    finally:
        bare.terminate()
        bare.wait(10)


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
        pids = {"app": app.pid, **{process_name(pid): pid for pid in children(app.pid)}}
        before = {name: thread_times(pid) for name, pid in pids.items()}
        reaped_before = reaped_children_seconds(app.pid)
        started = time.monotonic()
        time.sleep(seconds)
        after = {name: thread_times(pid) for name, pid in pids.items()}
        reaped = reaped_children_seconds(app.pid) - reaped_before
        elapsed = time.monotonic() - started
    finally:
        app.terminate()
        app.wait(10)
    result: dict[str, Any] = {"seconds": round(elapsed, 1), "processes": {}}
    for name in pids:
        used = {tid: after[name][tid] - before[name].get(tid, 0.0) for tid in after[name]}
        busy = {tid: round(100 * cpu / elapsed, 2) for tid, cpu in used.items() if cpu > 0}
        result["processes"][name] = {
            "percent_of_one_core": round(100 * sum(used.values()) / elapsed, 2),
            "threads": dict(sorted(busy.items(), key=lambda item: -item[1])),
        }
    # Helpers the app started and that ended within the window count too.
    result["processes"]["ended helpers"] = {"percent_of_one_core": round(100 * reaped / elapsed, 2)}
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
    parser.add_argument("--bare", nargs=2, metavar=("MIC", "SPEAKER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare_duplex(*args.bare)
        return 0
    if not sys.platform.startswith("linux"):
        print("idle_cpu: reads /proc; Linux only", file=sys.stderr)
        return 2

    from app.testkit.rig import VirtualAudioRig

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with VirtualAudioRig() as rig:
        env = {**os.environ, **rig.env}
        for index in range(args.runs):
            floor = floor_percent(env, rig.mic, rig.speaker, args.seconds, 2.0)
            run = one_run(env, rig.mic, rig.speaker, args.seconds, args.settle)
            run["floor_percent"] = floor
            run["ratio"] = round(run["total_percent"] / floor, 2) if floor else None
            runs.append(run)
            app_share = run["processes"]["app"]["percent_of_one_core"]
            print(
                f"run {index + 1}: app {app_share:.2f} %, app + server {run['total_percent']:.2f} %, "
                f"bare duplex floor {floor:.2f} % of a core: ratio {run['ratio']}"
            )
    totals = [run["total_percent"] for run in runs]
    apps = [run["processes"]["app"]["percent_of_one_core"] for run in runs]
    floors = [run["floor_percent"] for run in runs]
    ratios = [run["ratio"] for run in runs if run["ratio"] is not None]
    median_ratio = round(statistics.median(ratios), 2) if ratios else None
    report = {
        "benchmark": "idle_cpu",
        "what": "CPU while listening with nobody speaking, app + embedded server, % of one core, "
        "and its ratio to a bare sounddevice duplex pair of 10 ms blocks measured in the same run",
        "goal_ratio": GOAL_RATIO,
        "median_total_percent": round(statistics.median(totals), 2),
        "median_app_percent": round(statistics.median(apps), 2),
        "median_floor_percent": round(statistics.median(floors), 2),
        "median_ratio": median_ratio,
        "met_goal": median_ratio is not None and median_ratio <= GOAL_RATIO,
        "runs": runs,
        "machine": machine(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"median: app {report['median_app_percent']:.2f} %, app + server "
        f"{report['median_total_percent']:.2f} %, floor {report['median_floor_percent']:.2f} %, "
        f"ratio {median_ratio} (goal <= {GOAL_RATIO}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
