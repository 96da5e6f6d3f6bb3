"""The ``attach_diagnostics`` tool: with the user's yes, the facts a tier-1 technician asks for first.

What it collects, per field (the ``diagnostics.fields`` a policy allows, :data:`DIAGNOSTIC_FIELDS`):

* ``os``: the operating system's name, version and architecture (the platform module);
* ``uptime``: since the last start (Linux ``/proc/uptime``, macOS ``sysctl -n kern.boottime``,
  Windows ``GetTickCount64``);
* ``disk``: free and total space of the system drive and of the drive holding the home folder;
* ``power``: battery charge and whether on AC (Linux ``/sys/class/power_supply``, macOS
  ``pmset -g batt``, Windows ``GetSystemPowerStatus``), or "no battery";
* ``network``: the interfaces that are up, with their addresses (Linux ``ip -j addr`` or
  ``/sys/class/net``; macOS ``ifconfig``; Windows ``ipconfig /all``);
* ``vpn``: which of those look like a VPN adapter (tun, tap, wg, ppp, utun, ipsec, AnyConnect...);
* ``dns``: the resolvers in use and whether each policy host resolves;
* ``reachability``: a TCP connect to each policy host on 443, and how long it took;
* ``audio``: the default input and output device names (through a probe the caller passes, since
  this layer may not import the audio stack).

Nothing personal beyond that: no user name, computer name, MAC address, Wi-Fi network name or file
name is read into the report, and the user name and computer name are replaced wherever a probe's
text happens to hold them (an audio device called "Dana's AirPods"). IP addresses *are* included
(IPv6 link-local ones left out as noise): a technician needs them to tell a VPN address from a home
network's, and the report goes only to the company's own ticket system, after the user has seen it.

Every probe is bounded in time and never raises: a probe that fails says ``unknown (why)``. The
probes run in parallel daemon threads and the whole collection gives up after about 5 seconds, so a
stuck resolver cannot hold the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import getpass
import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from app.tools.delivery import DeliveryWorker
from app.tools.registry import Tool, ToolError
from app.tools.tickets import TicketOutbox

__all__ = [
    "DIAGNOSTIC_FIELDS",
    "AudioProbe",
    "DiagnosticsOptions",
    "Interface",
    "attach_diagnostics_tool",
    "collect",
    "render_report",
]

# The same names as app.config's (this layer may not import it; a test keeps the two equal).
DIAGNOSTIC_FIELDS: Final = ("os", "uptime", "disk", "power", "network", "vpn", "dns", "reachability", "audio")

AudioProbe = Callable[[str], str]  # "input" or "output" -> the default device's name; may raise

COLLECT_TIMEOUT_S: Final = 4.5
HOST_TIMEOUT_S: Final = 2.0
COMMAND_TIMEOUT_S: Final = 2.0
REACH_PORT: Final = 443

_T = TypeVar("_T")
_LOCAL_ID: Final = re.compile(r"\s*HD[-\s]?(\d{4,})\s*", re.IGNORECASE)
_VPN_NAME: Final = re.compile(r"^(tun|tap|wg|ppp|utun|ipsec|gpd|cscotun|nordlynx|zt)\d*|vpn", re.IGNORECASE)
_VPN_WORDS: Final = (
    "vpn",
    "wireguard",
    "anyconnect",
    "globalprotect",
    "fortinet",
    "forticlient",
    "pangp",
    "openvpn",
    "tap-windows",
    "wintun",
    "juniper",
    "pulse secure",
    "zscaler",
    "cisco systems vpn",
)


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface as the report shows it: never its MAC address."""

    name: str
    up: bool
    addresses: tuple[str, ...] = ()
    description: str = ""  # Windows' adapter description, which names the VPN product
    loopback: bool = False


@dataclass(frozen=True, slots=True)
class DiagnosticsOptions:
    """What a policy allows: whether the tool is offered, which fields, which hosts to check."""

    enabled: bool = True
    fields: tuple[str, ...] = DIAGNOSTIC_FIELDS
    hosts: tuple[str, ...] = ()
    audio: AudioProbe | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def _unknown(reason: object) -> str:
    text = str(reason).strip() or type(reason).__name__
    return f"unknown ({text[:120]})"


def _guarded(probe: Callable[[], list[str]]) -> list[str]:
    try:
        lines = probe()
    except Exception as exc:  # a probe's failure is a fact for the report, never a crash
        return [_unknown(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)]
    return lines or ["unknown (nothing found)"]


def _parallel(calls: Mapping[str, Callable[[], _T]], timeout_s: float) -> dict[str, _T | None]:
    """Runs each call in a daemon thread; the ones not done by ``timeout_s`` are None.

    Daemon threads rather than an executor: getaddrinfo cannot be interrupted, and a stuck one must
    neither hold the caller nor keep the process alive at exit.
    """
    results: dict[str, _T | None] = dict.fromkeys(calls)
    lock = threading.Lock()

    def run(name: str, call: Callable[[], _T]) -> None:
        value = call()
        with lock:
            results[name] = value

    threads = [
        threading.Thread(target=run, args=(name, call), name=f"diagnostics-{name}", daemon=True)
        for name, call in calls.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return dict(results)


def _command(*args: str) -> str:
    """A probe command's output; raises OSError or SubprocessError, which the probe turns into unknown."""
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        errors="replace",  # ipconfig writes the OEM code page: a garbled label must not lose the addresses
        timeout=COMMAND_TIMEOUT_S,
        check=True,
        stdin=subprocess.DEVNULL,
        # The tray app has no console on Windows: without this each probe would flash a window.
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )
    return done.stdout


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _shown_address(text: str) -> str | None:
    """The address without a zone or a suffix; None for what is not an address or is link-local IPv6."""
    bare = re.sub(r"\(.*\)$", "", text.strip()).split("%")[0]
    address, _, prefix = bare.partition("/")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if parsed.version == 6 and parsed.is_link_local:
        return None
    return f"{parsed}/{prefix}" if prefix.isdigit() else str(parsed)


# ---------------------------------------------------------------------------------------------------
# os, uptime
# ---------------------------------------------------------------------------------------------------


def os_lines() -> list[str]:
    system = platform.system() or "unknown OS"
    machine = platform.machine() or "unknown architecture"
    if system == "Linux":
        try:
            name = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
        except OSError:
            name = "Linux"
        return [f"{name}, kernel {platform.release()} ({machine})"]
    if system == "Darwin":
        return [f"macOS {platform.mac_ver()[0] or platform.release()} ({machine})"]
    if system == "Windows":
        release, version, _csd, _kind = platform.win32_ver()
        edition = platform.win32_edition() or ""
        return [" ".join(filter(None, ("Windows", release, edition, "build", version, f"({machine})")))]
    return [f"{system} {platform.release()} ({machine})"]


def parse_proc_uptime(text: str) -> float:
    return float(text.split()[0])


def parse_boottime(text: str, now: float) -> float:
    """Seconds since boot from ``sysctl -n kern.boottime``: ``{ sec = 1700000000, usec = 5 } Mon ...``."""
    match = re.search(r"\bsec\s*=\s*(\d+)", text)
    if match is None:
        raise ValueError(f"no boot time in {text.strip()[:60]!r}")
    return now - int(match.group(1))


def _windows_uptime() -> float:
    if sys.platform == "win32":
        tick = ctypes.windll.kernel32.GetTickCount64
        tick.restype = ctypes.c_uint64
        return int(tick()) / 1000.0
    raise OSError("not Windows")


def uptime_lines() -> list[str]:
    if sys.platform.startswith("linux"):
        seconds = parse_proc_uptime(Path("/proc/uptime").read_text(encoding="ascii"))
    elif sys.platform == "darwin":
        seconds = parse_boottime(_command("sysctl", "-n", "kern.boottime"), time.time())
    elif sys.platform == "win32":
        seconds = _windows_uptime()
    else:
        return [_unknown(f"not supported on {sys.platform}")]
    return [f"up {_duration(seconds)} since the last restart"]


# ---------------------------------------------------------------------------------------------------
# disk
# ---------------------------------------------------------------------------------------------------


def _system_root() -> str:
    return os.environ.get("SYSTEMDRIVE", "C:") + "\\" if sys.platform == "win32" else "/"


def disk_lines() -> list[str]:
    lines = []
    root = _system_root()
    home = Path.home()
    for label, path in (("system drive", root), ("home folder's drive", str(home))):
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            lines.append(f"{label}: {_unknown(exc.strerror or exc)}")
            continue
        if label != "system drive":
            try:
                if os.stat(path).st_dev == os.stat(root).st_dev:
                    lines.append(f"{label}: the system drive")
                    continue
            except OSError:
                pass  # then show its numbers, which is never wrong
        percent = 100 * usage.free / usage.total if usage.total else 0.0
        lines.append(f"{label}: {_gb(usage.free)} free of {_gb(usage.total)} ({percent:.0f}% free)")
    return lines


# ---------------------------------------------------------------------------------------------------
# power
# ---------------------------------------------------------------------------------------------------


def linux_power_lines(root: Path = Path("/sys/class/power_supply")) -> list[str]:
    """From ``/sys/class/power_supply``: each battery's charge and status, and whether on AC."""
    batteries: list[str] = []
    on_ac: bool | None = None
    try:
        supplies = sorted(root.iterdir())
    except FileNotFoundError:
        supplies = []

    def read(supply: Path, name: str) -> str:
        try:
            return (supply / name).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return ""

    for supply in supplies:
        kind = read(supply, "type")
        if kind == "Battery" and read(supply, "scope") != "Device":  # a mouse's battery is not the laptop's
            capacity = read(supply, "capacity")
            status = read(supply, "status").lower() or "status unknown"
            batteries.append(f"battery {capacity or '?'}% ({status})")
        elif kind in ("Mains", "USB", "USB_C") and read(supply, "online") in ("0", "1"):
            on_ac = bool(on_ac) or read(supply, "online") == "1"
    if not batteries:
        return ["no battery (a desktop, or none reported)"]
    if on_ac is not None:
        batteries.append("on AC power" if on_ac else "on battery power")
    return batteries


def parse_pmset(text: str) -> list[str]:
    """``pmset -g batt``: the power source, then ``-InternalBattery-0 (id=..)\t85%; charging; ...`` lines."""
    source = re.search(r"drawing from '([^']+)'", text)
    lines = []
    for match in re.finditer(r"-InternalBattery-\d+.*?(\d+)%;\s*([^;]+);", text):
        lines.append(f"battery {match.group(1)}% ({match.group(2).strip()})")
    if not lines:
        return ["no battery (a desktop, or none reported)"]
    if source is not None:
        lines.append("on AC power" if "AC" in source.group(1) else "on battery power")
    return lines


def describe_windows_power(ac_line: int, battery_flag: int, percent: int) -> list[str]:
    """From SYSTEM_POWER_STATUS: ACLineStatus 0/1/255, BatteryFlag 128 = no battery, percent 255 = unknown."""
    if battery_flag == 128:
        return ["no battery (a desktop, or none reported)"]
    charge = "unknown" if percent == 255 else f"{percent}%"
    lines = [f"battery {charge}" + (" (charging)" if battery_flag != 255 and battery_flag & 8 else "")]
    lines.append({0: "on battery power", 1: "on AC power"}.get(ac_line, "power source unknown"))
    return lines


def _windows_power() -> list[str]:
    if sys.platform == "win32":

        class SystemPowerStatus(ctypes.Structure):
            _fields_ = [
                ("ACLineStatus", ctypes.c_ubyte),
                ("BatteryFlag", ctypes.c_ubyte),
                ("BatteryLifePercent", ctypes.c_ubyte),
                ("SystemStatusFlag", ctypes.c_ubyte),
                ("BatteryLifeTime", ctypes.c_ulong),
                ("BatteryFullLifeTime", ctypes.c_ulong),
            ]

        status = SystemPowerStatus()
        if not ctypes.windll.kernel32.GetSystemPowerStatus(ctypes.byref(status)):
            raise OSError("GetSystemPowerStatus failed")
        return describe_windows_power(status.ACLineStatus, status.BatteryFlag, status.BatteryLifePercent)
    raise OSError("not Windows")


def power_lines() -> list[str]:
    if sys.platform.startswith("linux"):
        return linux_power_lines()
    if sys.platform == "darwin":
        return parse_pmset(_command("pmset", "-g", "batt"))
    if sys.platform == "win32":
        return _windows_power()
    return [_unknown(f"not supported on {sys.platform}")]


# ---------------------------------------------------------------------------------------------------
# network, vpn
# ---------------------------------------------------------------------------------------------------


def parse_ip_json(text: str) -> list[Interface]:
    """``ip -j addr``: up means operstate UP, or UNKNOWN with the UP flag (loopback, tun devices)."""
    interfaces = []
    for entry in json.loads(text):
        flags = entry.get("flags", [])
        state = entry.get("operstate", "")
        up = state == "UP" or (state == "UNKNOWN" and "UP" in flags and "LOWER_UP" in flags)
        addresses = tuple(
            shown
            for info in entry.get("addr_info", [])
            if (shown := _shown_address(f"{info.get('local', '')}/{info.get('prefixlen', '')}")) is not None
        )
        interfaces.append(
            Interface(str(entry.get("ifname", "?")), up, addresses, loopback="LOOPBACK" in flags)
        )
    return interfaces


def _linux_interfaces() -> list[Interface]:
    if shutil.which("ip"):
        try:
            return parse_ip_json(_command("ip", "-j", "addr"))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass  # an old iproute2 without -j: the names and states are still there
    interfaces = []
    for _index, name in socket.if_nameindex():
        try:
            state = Path("/sys/class/net", name, "operstate").read_text(encoding="ascii").strip()
        except OSError:
            state = "unknown"
        interfaces.append(Interface(name, state in ("up", "unknown"), loopback=name == "lo"))
    return interfaces


_IFCONFIG_INET: Final = re.compile(
    r"^\s+inet6?\s+(\S+)(?:.*?(?:prefixlen (\d+)|netmask 0x([0-9a-fA-F]{8})))?", re.MULTILINE
)


def _prefix(prefixlen: str | None, netmask: str | None) -> str:
    if prefixlen:
        return prefixlen
    return str(bin(int(netmask, 16)).count("1")) if netmask else ""


def parse_ifconfig(text: str) -> list[Interface]:
    """macOS ``ifconfig``: a block per interface; ``ether`` lines (MAC addresses) are never read."""
    interfaces = []
    for block in re.split(r"\n(?=\S)", text.strip()):
        header = re.match(r"(\S+?):\s+flags=\w+<([^>]*)>", block)
        if header is None:
            continue
        flags = header.group(2).split(",")
        addresses = tuple(
            shown
            for match in _IFCONFIG_INET.finditer(block)
            if (shown := _shown_address(f"{match.group(1)}/{_prefix(match.group(2), match.group(3))}"))
        )
        status = re.search(r"^\s+status:\s*(\w+)", block, re.MULTILINE)
        up = "UP" in flags and (
            status.group(1) == "active" if status else "RUNNING" in flags or bool(addresses)
        )
        interfaces.append(Interface(header.group(1), up, addresses, loopback="LOOPBACK" in flags))
    return interfaces


_IPCONFIG_LINE: Final = re.compile(r"^\s+([^:]*?)[\s.]*:\s*(.*)$")


def parse_ipconfig(text: str) -> tuple[list[Interface], list[str]]:
    """``ipconfig /all``: the adapters (up unless "Media disconnected") and the DNS servers.

    Only lines whose label names IPv4/IPv6, Description, Media State or DNS Servers are read, so the
    host name and the physical (MAC) address in the same output never reach the report. The labels
    are English; on other languages the IP-address labels still match (they keep "IPv4"/"IPv6").
    """
    interfaces: list[Interface] = []
    servers: list[str] = []
    name: str | None = None
    up = True
    addresses: list[str] = []
    description = ""
    label = ""

    def flush() -> None:
        if name is not None:
            interfaces.append(Interface(name, up, tuple(addresses), description))

    for line in text.splitlines():
        if line and not line[0].isspace():
            flush()
            header = re.match(r"(.*?adapter\s+)?(.+?):\s*$", line.strip(), re.IGNORECASE)
            name = header.group(2) if header and header.group(1) else None
            up, addresses, description, label = True, [], "", ""
            continue
        match = _IPCONFIG_LINE.match(line)
        if match is not None:
            label, value = match.group(1).strip().lower(), match.group(2).strip()
        elif line.strip():
            value = line.strip()  # a continuation: the second DNS server and so on
        else:
            continue
        if name is None:
            continue
        if label.startswith("media state"):
            up = "disconnected" not in value.lower()
        elif label.startswith("description"):
            description = value
        elif "ipv4" in label or "ipv6" in label:
            shown = _shown_address(value)
            if shown is not None:
                addresses.append(shown)
        elif label.startswith("dns servers"):
            shown = _shown_address(value)
            if shown is not None and shown not in servers:
                servers.append(shown)
    flush()
    return interfaces, servers


def interfaces() -> list[Interface]:
    if sys.platform.startswith("linux"):
        return _linux_interfaces()
    if sys.platform == "darwin":
        return parse_ifconfig(_command("ifconfig"))
    if sys.platform == "win32":
        return parse_ipconfig(_command("ipconfig", "/all"))[0]
    return [Interface(name, True) for _index, name in socket.if_nameindex()]


def network_lines(found: Sequence[Interface]) -> list[str]:
    up = [one for one in found if one.up and not one.loopback]
    if not up:
        return ["no network interface is up"]
    return [f"{one.name}: {', '.join(one.addresses) or 'no address'}" for one in up]


def is_vpn(interface: Interface) -> bool:
    text = f"{interface.name} {interface.description}".lower()
    return bool(_VPN_NAME.search(interface.name)) or any(word in text for word in _VPN_WORDS)


def vpn_lines(found: Sequence[Interface]) -> list[str]:
    vpns = [
        one
        for one in found
        if one.up
        and not one.loopback
        and is_vpn(one)
        # macOS keeps utun0-3 up for its own services with link-local addresses only: not a VPN.
        and not (one.name.startswith("utun") and not one.addresses)
    ]
    if not vpns:
        return ["no VPN adapter is up"]
    return [
        f"VPN adapter up: {one.name}" + (f" ({one.description})" if one.description else "") for one in vpns
    ]


# ---------------------------------------------------------------------------------------------------
# dns, reachability
# ---------------------------------------------------------------------------------------------------


def parse_resolv_conf(text: str) -> list[str]:
    return [
        shown
        for line in text.splitlines()
        if (parts := line.split()) and parts[0] == "nameserver" and len(parts) > 1
        if (shown := _shown_address(parts[1])) is not None
    ]


def parse_scutil_dns(text: str) -> list[str]:
    """macOS ``scutil --dns``: ``nameserver[0] : 192.168.1.1`` lines, each server once."""
    servers: list[str] = []
    for match in re.finditer(r"nameserver\[\d+\]\s*:\s*(\S+)", text):
        shown = _shown_address(match.group(1))
        if shown is not None and shown not in servers:
            servers.append(shown)
    return servers


def resolvers() -> list[str]:
    if sys.platform.startswith("linux"):
        servers = parse_resolv_conf(Path("/etc/resolv.conf").read_text(encoding="utf-8", errors="replace"))
        upstream = Path("/run/systemd/resolve/resolv.conf")
        if servers == ["127.0.0.53"] and upstream.exists():  # systemd-resolved's stub: say what it asks
            servers += parse_resolv_conf(upstream.read_text(encoding="utf-8", errors="replace"))
        return servers
    if sys.platform == "darwin":
        return parse_scutil_dns(_command("scutil", "--dns"))
    if sys.platform == "win32":
        return parse_ipconfig(_command("ipconfig", "/all"))[1]
    return []


def resolve_line(host: str) -> str:
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"{host}: does not resolve ({reason})"
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    return f"{host}: resolves to {', '.join(addresses[:4])}"


def _per_host(hosts: Sequence[str], probe: Callable[[str], str]) -> list[str]:
    if not hosts:
        return ["no hosts set by policy"]
    answers = _parallel({host: functools.partial(probe, host) for host in hosts}, HOST_TIMEOUT_S + 0.5)
    return [
        answer if answer is not None else f"{host}: unknown (no answer in time)"
        for host, answer in answers.items()
    ]


def dns_lines(hosts: Sequence[str]) -> list[str]:
    try:
        servers = resolvers()
        lines = [f"resolvers: {', '.join(servers)}" if servers else "resolvers: none found"]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        lines = [f"resolvers: {_unknown(exc)}"]
    return lines + _per_host(hosts, resolve_line)


def reach_line(host: str, port: int = REACH_PORT, timeout_s: float = HOST_TIMEOUT_S) -> str:
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except (OSError, UnicodeError) as exc:
        took = (time.monotonic() - started) * 1000
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        else:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        return f"{host}: not reachable on port {port} ({reason}, after {took:.0f} ms)"
    return f"{host}: reachable on port {port} in {(time.monotonic() - started) * 1000:.0f} ms"


def reachability_lines(hosts: Sequence[str], port: int = REACH_PORT) -> list[str]:
    return _per_host(hosts, lambda host: reach_line(host, port))


# ---------------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------------


def audio_lines(probe: AudioProbe | None) -> list[str]:
    if probe is None:
        return ["unknown (audio devices cannot be listed here)"]
    lines = []
    for kind in ("input", "output"):
        try:
            lines.append(f"default {kind}: {probe(kind)}")
        except Exception as exc:  # PortAudio's errors are its own class; any failure is "unknown"
            lines.append(f"default {kind}: {_unknown(exc)}")
    return lines


# ---------------------------------------------------------------------------------------------------
# Collecting and rendering
# ---------------------------------------------------------------------------------------------------


def _scrub(lines: Iterable[str], names: Iterable[str]) -> list[str]:
    """Replaces the user's and the computer's names wherever a probe's text holds them."""
    words = [name for name in names if name and len(name) >= 2]
    if not words:
        return list(lines)
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(word)}(?!\w)" for word in words), re.IGNORECASE)
    return [pattern.sub("[hidden]", line) for line in lines]


def _personal_names() -> list[str]:
    names = []
    with contextlib.suppress(Exception):  # no user name to read: then there is none to hide
        names.append(getpass.getuser())
    host = socket.gethostname()
    names += [host, host.split(".")[0]]
    return [name for name in names if name.lower() != "localhost"]  # a checked host may be named so


def collect(
    fields: Sequence[str],
    hosts: Sequence[str] = (),
    *,
    audio: AudioProbe | None = None,
    timeout_s: float = COLLECT_TIMEOUT_S,
    port: int = REACH_PORT,
) -> dict[str, list[str]]:
    """The lines of each allowed field, collected in parallel; a field not done in time is unknown."""
    wanted = [name for name in DIAGNOSTIC_FIELDS if name in fields]
    found: list[Interface] | None = None
    found_lock = threading.Lock()

    def shared_interfaces() -> list[Interface]:
        nonlocal found  # network and vpn read the same listing: one command, not two
        with found_lock:
            if found is None:
                found = interfaces()
            return found

    probes: dict[str, Callable[[], list[str]]] = {
        "os": os_lines,
        "uptime": uptime_lines,
        "disk": disk_lines,
        "power": power_lines,
        "network": lambda: network_lines(shared_interfaces()),
        "vpn": lambda: vpn_lines(shared_interfaces()),
        "dns": lambda: dns_lines(hosts),
        "reachability": lambda: reachability_lines(hosts, port),
        "audio": lambda: audio_lines(audio),
    }
    results = _parallel({name: functools.partial(_guarded, probes[name]) for name in wanted}, timeout_s)
    names = _personal_names()
    return {
        name: _scrub(lines, names) if lines is not None else ["unknown (took too long)"]
        for name, lines in results.items()
    }


_LABELS: Final = {
    "os": "Operating system",
    "uptime": "Uptime",
    "disk": "Disk space",
    "power": "Power",
    "network": "Network",
    "vpn": "VPN",
    "dns": "DNS",
    "reachability": "Reachability (TCP 443)",
    "audio": "Audio devices",
}


def render_report(collected: Mapping[str, Sequence[str]], fields: Sequence[str]) -> str:
    """The exact text attached to the ticket: the allowed fields, in a fixed order, nothing else."""
    lines = ["Diagnostics from the user's computer (sent with their consent):"]
    for name in DIAGNOSTIC_FIELDS:
        if name not in fields:
            continue
        values = list(collected.get(name) or ["unknown (not collected)"])
        if len(values) == 1:
            lines.append(f"{_LABELS[name]}: {values[0]}")
        else:
            lines.append(f"{_LABELS[name]}:")
            lines += [f"  - {value}" for value in values]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------------

PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "ticket": {
            "type": "string",
            "description": "The ticket to attach them to: the id the user was told, like HD-1042.",
            "maxLength": 64,
        },
        "user_agreed": {
            "type": "boolean",
            "default": False,
            "description": "True only after you asked the user, said what will be sent, and they said yes.",
        },
    },
    "required": ["ticket"],
    "additionalProperties": False,
}


def _describe_fields(fields: Sequence[str]) -> str:
    words = {
        "os": "the operating system",
        "uptime": "uptime",
        "disk": "free disk space",
        "power": "battery and power",
        "network": "network interfaces and their IP addresses",
        "vpn": "whether a VPN is connected",
        "dns": "DNS servers and name lookups",
        "reachability": "whether company servers can be reached",
        "audio": "the default microphone and speaker names",
    }
    return ", ".join(words[name] for name in DIAGNOSTIC_FIELDS if name in fields)


def attach_diagnostics_tool(
    outbox: TicketOutbox,
    options: DiagnosticsOptions,
    *,
    delivery: DeliveryWorker | None = None,
    port: int = REACH_PORT,
) -> Tool:
    """The tool; ``port`` is where reachability connects (tests use a local listener)."""
    fields = tuple(name for name in DIAGNOSTIC_FIELDS if name in options.fields)
    hosts = tuple(options.hosts)
    what = _describe_fields(fields)

    def attach(ticket_id: str) -> dict[str, Any]:
        if outbox.find(ticket_id) is None:
            raise ToolError("not_found", f"There is no ticket {ticket_id} from this computer.")
        text = render_report(collect(fields, hosts, audio=options.audio, port=port), fields)
        try:
            if delivery is not None:
                delivery.add_note(ticket_id, text)
            else:
                outbox.add_note(ticket_id, text)
        except ValueError as exc:
            raise ToolError("not_found", f"There is no ticket {ticket_id} from this computer.") from exc
        except OSError as exc:
            raise ToolError(
                "not_saved", f"The diagnostics could not be saved: {exc.strerror or exc}"
            ) from exc
        return {
            "attached_to": ticket_id,
            "shown": text,
            "message": f"Diagnostics attached to {ticket_id}; this is exactly what was sent:",
        }

    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments.get("user_agreed") is not True:
            raise ToolError(
                "consent_needed",
                f"Ask the user first: say you would attach {what} from this computer to their ticket, "
                "and call again with user_agreed true only if they say yes.",
            )
        match = _LOCAL_ID.fullmatch(str(arguments.get("ticket") or ""))
        if match is None:
            raise ToolError("invalid_ticket", "Give the ticket id the user was told, like HD-1042.")
        return await asyncio.to_thread(attach, f"HD-{match.group(1)}")

    return Tool(
        name="attach_diagnostics",
        description=(
            "Attach facts about this computer to one of the user's tickets, to help the technician: "
            f"{what}. Nothing else (no user name, computer name or files). Before calling, ask the user "
            "whether they agree, telling them what will be sent; call only after they say yes, with "
            "user_agreed true. The result shows the exact text sent; tell the user it was attached."
        ),
        parameters=PARAMETERS,
        handler=handler,
    )
