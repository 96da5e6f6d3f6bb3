"""attach_diagnostics: the real Linux probes on this machine, the report's exact text, and the tool.

The macOS and Windows paths cannot run here: their parsers are tested with recorded command output
(``pmset``, ``sysctl``, ``ifconfig``, ``scutil``, ``ipconfig``) and the Windows power decoding.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import config
from app.config import load_settings
from app.launch import plan_from_settings
from app.sealed_files import DataKeyring
from app.tools import default_registry
from app.tools import diagnostics as d
from app.tools.delivery import DeliveryWorker
from app.tools.diagnostics import DIAGNOSTIC_FIELDS, DiagnosticsOptions, Interface, render_report
from app.tools.registry import ToolRegistry
from app.tools.tickets import TicketOutbox
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux probes")


def _personal(text: str) -> list[str]:
    """The user's and computer's names found in ``text`` as words (``vm`` is not in ``kvm``)."""
    names = {getpass.getuser(), socket.gethostname(), socket.gethostname().split(".")[0]}
    return [name for name in names if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE)]


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()  # bound, never listened, closed: nothing answers there
    return port


def test_the_fields_are_the_settings_fields() -> None:
    assert DIAGNOSTIC_FIELDS == config.DIAGNOSTIC_FIELDS


# ---------------------------------------------------------------------------------------------------
# The real probes on this Linux machine
# ---------------------------------------------------------------------------------------------------


@linux
def test_os_and_uptime_on_this_machine() -> None:
    (os_line,) = d.os_lines()
    assert f"kernel {__import__('platform').release()}" in os_line
    (uptime,) = d.uptime_lines()
    assert re.fullmatch(r"up (\d+ d )?(\d+ h )?\d+ min since the last restart", uptime), uptime
    seconds = float(Path("/proc/uptime").read_text().split()[0])
    assert f"{int(seconds // 60) % 60} min" in uptime


@linux
def test_disk_on_this_machine() -> None:
    system, home = d.disk_lines()
    assert re.fullmatch(r"system drive: \d+\.\d GB free of \d+\.\d GB \(\d+% free\)", system), system
    assert home.startswith("home folder's drive: ")
    assert str(Path.home()) not in home  # the folder's path (and the user name in it) is never shown


@linux
def test_power_on_this_machine() -> None:
    lines = d.power_lines()
    batteries = [
        p for p in Path("/sys/class/power_supply").glob("*") if (p / "type").read_text().strip() == "Battery"
    ]
    if batteries:
        assert re.match(r"battery \d+%", lines[0])
    else:
        assert lines == ["no battery (a desktop, or none reported)"]


@linux
def test_network_lists_the_interfaces_that_are_up_without_mac_addresses() -> None:
    found = d.interfaces()
    up_here = {
        p.name for p in Path("/sys/class/net").iterdir() if (p / "operstate").read_text().strip() == "up"
    }
    assert up_here <= {one.name for one in found if one.up}
    lines = d.network_lines(found)
    assert {line.split(":")[0] for line in lines} >= up_here
    for name in up_here:
        mac = (Path("/sys/class/net") / name / "address").read_text().strip()
        assert mac not in "\n".join(lines)
    assert not any(line.startswith("lo:") for line in lines)  # loopback is no news to a technician
    for one in found:
        for address in one.addresses:
            assert not address.lower().startswith("fe80"), "link-local IPv6 is left out"


@linux
def test_vpn_on_this_machine_and_by_name() -> None:
    found = d.interfaces()
    expected = [one.name for one in found if one.up and not one.loopback and d.is_vpn(one)]
    lines = d.vpn_lines(found)
    assert lines == (["no VPN adapter is up"] if not expected else [f"VPN adapter up: {n}" for n in expected])
    for name in ("tun0", "tap1", "wg0", "ppp0", "utun3", "ipsec0", "corp-vpn", "gpd0"):
        assert d.is_vpn(Interface(name, True)), name
    for name in ("eth0", "en0", "wlan0", "enp3s0", "docker0", "Wi-Fi"):
        assert not d.is_vpn(Interface(name, True)), name
    assert d.is_vpn(Interface("Ethernet 2", True, description="Cisco AnyConnect Virtual Miniport Adapter"))
    assert d.vpn_lines([Interface("wg0", False)]) == ["no VPN adapter is up"]


@linux
def test_dns_reads_resolv_conf_and_resolves_each_host() -> None:
    lines = d.dns_lines(("localhost", "no-such-host.invalid"))
    configured = d.parse_resolv_conf(Path("/etc/resolv.conf").read_text())
    assert lines[0].startswith("resolvers: ")
    for server in configured:
        assert server in lines[0]
    assert re.fullmatch(r"localhost: resolves to (127\.0\.0\.1|::1).*", lines[1]), lines[1]
    assert lines[2].startswith("no-such-host.invalid: does not resolve (")
    assert d.dns_lines(())[1:] == ["no hosts set by policy"]


def test_reachability_against_a_local_listener_and_a_closed_port(listener: int, closed_port: int) -> None:
    reachable = d.reach_line("127.0.0.1", listener)
    assert re.fullmatch(rf"127\.0\.0\.1: reachable on port {listener} in \d+ ms", reachable), reachable
    closed = d.reach_line("127.0.0.1", closed_port)
    assert re.fullmatch(
        rf"127\.0\.0\.1: not reachable on port {closed_port} \(Connection refused, after \d+ ms\)", closed
    ), closed
    assert d.reachability_lines(()) == ["no hosts set by policy"]


def test_a_host_that_does_not_resolve_is_said_so_in_both_fields() -> None:
    (dns,) = d.dns_lines(("nothing-here.invalid",))[1:]
    assert dns.startswith("nothing-here.invalid: does not resolve (")
    (reach,) = d.reachability_lines(("nothing-here.invalid",))
    assert reach.startswith("nothing-here.invalid: not reachable on port 443 (")


def test_audio_names_through_the_probe_and_a_failing_probe() -> None:
    names = {"input": "Built-in Microphone", "output": "USB Headset"}
    assert d.audio_lines(names.__getitem__) == [
        "default input: Built-in Microphone",
        "default output: USB Headset",
    ]

    def broken(kind: str) -> str:
        raise RuntimeError("Error querying device -1")

    assert d.audio_lines(broken) == [
        "default input: unknown (Error querying device -1)",
        "default output: unknown (Error querying device -1)",
    ]
    assert d.audio_lines(None) == ["unknown (audio devices cannot be listed here)"]


@linux
def test_the_real_audio_probe_never_raises() -> None:
    from app.audio.devices import find_device

    lines = d.audio_lines(lambda kind: find_device(None, "input" if kind == "input" else "output").name)
    assert [line.split(":")[0] for line in lines] == ["default input", "default output"]


@linux
def test_the_whole_collection_is_bounded_and_holds_nothing_personal(listener: int) -> None:
    started = time.monotonic()
    collected = d.collect(
        DIAGNOSTIC_FIELDS,
        ("localhost", "nothing-here.invalid"),
        audio=lambda kind: f"{getpass.getuser()}'s headset on {socket.gethostname()}",
        port=listener,
    )
    assert time.monotonic() - started < 5.0
    assert list(collected) == list(DIAGNOSTIC_FIELDS)
    text = render_report(collected, DIAGNOSTIC_FIELDS)
    assert "unknown (took too long)" not in text
    assert _personal(text) == []
    assert "default input: [hidden]'s headset on [hidden]" in text
    assert "localhost: reachable on port" in text and "nothing-here.invalid: does not resolve" in text


def test_a_stuck_probe_is_cut_off_and_said_so() -> None:
    release = threading.Event()

    def stuck(kind: str) -> str:
        release.wait(10)
        return "never shown"

    started = time.monotonic()
    collected = d.collect(("os", "audio"), audio=stuck, timeout_s=0.5)
    release.set()
    assert time.monotonic() - started < 2.0
    assert collected["audio"] == ["unknown (took too long)"]
    assert collected["os"] != ["unknown (took too long)"]


def test_a_crashing_probe_is_unknown_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash() -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(d, "disk_lines", crash)
    assert d.collect(("disk",)) == {"disk": ["unknown (PermissionError: [Errno 13] Permission denied)"]}


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------

COLLECTED = {
    "os": ["Debian GNU/Linux 12 (bookworm), kernel 6.1.0 (x86_64)"],
    "uptime": ["up 2 d 3 h 4 min since the last restart"],
    "disk": ["system drive: 81.5 GB free of 270.6 GB (30% free)", "home folder's drive: the system drive"],
    "power": ["no battery (a desktop, or none reported)"],
    "network": ["eth0: 10.0.0.5/24", "wg0: 10.8.0.2/32"],
    "vpn": ["VPN adapter up: wg0"],
    "dns": ["resolvers: 10.0.0.53", "intranet.contoso.example: resolves to 10.1.2.3"],
    "reachability": ["intranet.contoso.example: reachable on port 443 in 12 ms"],
    "audio": ["default input: USB Headset", "default output: USB Headset"],
}


def test_the_report_is_exactly_the_allowed_fields_in_order() -> None:
    assert render_report(COLLECTED, DIAGNOSTIC_FIELDS) == "\n".join(
        [
            "Diagnostics from the user's computer (sent with their consent):",
            "Operating system: Debian GNU/Linux 12 (bookworm), kernel 6.1.0 (x86_64)",
            "Uptime: up 2 d 3 h 4 min since the last restart",
            "Disk space:",
            "  - system drive: 81.5 GB free of 270.6 GB (30% free)",
            "  - home folder's drive: the system drive",
            "Power: no battery (a desktop, or none reported)",
            "Network:",
            "  - eth0: 10.0.0.5/24",
            "  - wg0: 10.8.0.2/32",
            "VPN: VPN adapter up: wg0",
            "DNS:",
            "  - resolvers: 10.0.0.53",
            "  - intranet.contoso.example: resolves to 10.1.2.3",
            "Reachability (TCP 443): intranet.contoso.example: reachable on port 443 in 12 ms",
            "Audio devices:",
            "  - default input: USB Headset",
            "  - default output: USB Headset",
        ]
    )


def test_a_policy_limits_the_report_whatever_was_collected() -> None:
    assert render_report(COLLECTED, ("vpn", "os")) == (
        "Diagnostics from the user's computer (sent with their consent):\n"
        "Operating system: Debian GNU/Linux 12 (bookworm), kernel 6.1.0 (x86_64)\n"
        "VPN: VPN adapter up: wg0"
    )
    assert render_report({}, ("disk",)).endswith("\nDisk space: unknown (not collected)")
    assert d.collect(("os", "nonsense")).keys() == {"os"}


# ---------------------------------------------------------------------------------------------------
# The other systems' outputs, recorded
# ---------------------------------------------------------------------------------------------------

PMSET_ON_BATTERY = (
    "Now drawing from 'Battery Power'\n"
    " -InternalBattery-0 (id=4653155)\t76%; discharging; 4:12 remaining present: true\n"
)
PMSET_CHARGING = (
    "Now drawing from 'AC Power'\n"
    " -InternalBattery-0 (id=4653155)\t95%; charging; 0:20 remaining present: true\n"
)
PMSET_DESKTOP = "Now drawing from 'AC Power'\n"
SYSCTL_BOOTTIME = "{ sec = 1764750000, usec = 123456 } Wed Dec  3 08:20:00 2025\n"

IFCONFIG = """lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384
\toptions=1203<RXCSUM,TXCSUM,TXSTATUS,SW_TIMESTAMP>
\tinet 127.0.0.1 netmask 0xff000000
\tinet6 ::1 prefixlen 128
\tinet6 fe80::1%lo0 prefixlen 64 scopeid 0x1
\tnd6 options=201<PERFORMNUD,DAD>
en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\toptions=6463<RXCSUM,TXCSUM,TSO4,TSO6,CHANNEL_IO,PARTIAL_CSUM,ZEROINVERT_CSUM>
\tether a4:83:e7:12:34:56
\tinet6 fe80::10c2:2f3a:9b4e:1d2c%en0 prefixlen 64 secured scopeid 0xe
\tinet 192.168.1.42 netmask 0xffffff00 broadcast 192.168.1.255
\tnd6 options=201<PERFORMNUD,DAD>
\tmedia: autoselect
\tstatus: active
en1: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\toptions=460<TSO4,TSO6,CHANNEL_IO>
\tether 36:1c:4a:aa:bb:01
\tmedia: autoselect <full-duplex>
\tstatus: inactive
utun0: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> mtu 1380
\tinet6 fe80::d4a1:5c3e:7b2f:1a90%utun0 prefixlen 64 scopeid 0x10
utun3: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> mtu 1380
\tinet 10.8.0.6 --> 10.8.0.6 netmask 0xffffffff
"""

SCUTIL_DNS = """DNS configuration

resolver #1
  search domain[0] : corp.contoso.com
  nameserver[0] : 10.0.0.53
  nameserver[1] : 10.0.0.54
  if_index : 22 (utun3)
  flags    : Request A records
  reach    : 0x00000002 (Reachable)

resolver #2
  domain   : local
  options  : mdns
  timeout  : 5

DNS configuration (for scoped queries)

resolver #1
  nameserver[0] : 192.168.1.1
  if_index : 14 (en0)
"""

IPCONFIG_ALL = """
Windows IP Configuration

   Host Name . . . . . . . . . . . . : DANA-LAPTOP
   Primary Dns Suffix  . . . . . . . : corp.contoso.com
   Node Type . . . . . . . . . . . . : Hybrid
   IP Routing Enabled. . . . . . . . : No

Ethernet adapter Ethernet:

   Media State . . . . . . . . . . . : Media disconnected
   Connection-specific DNS Suffix  . :
   Description . . . . . . . . . . . : Intel(R) Ethernet Connection (7) I219-LM
   Physical Address. . . . . . . . . : 8C-16-45-AA-BB-CC
   DHCP Enabled. . . . . . . . . . . : Yes

Ethernet adapter Ethernet 2:

   Connection-specific DNS Suffix  . : corp.contoso.com
   Description . . . . . . . . . . . : Cisco AnyConnect Virtual Miniport Adapter for Windows x64
   Physical Address. . . . . . . . . : 00-05-9A-3C-7A-00
   DHCP Enabled. . . . . . . . . . . : No
   Link-local IPv6 Address . . . . . : fe80::8d4f:1e2b:4b2a:91c3%22(Preferred)
   IPv4 Address. . . . . . . . . . . : 10.20.30.40(Preferred)
   Subnet Mask . . . . . . . . . . . : 255.255.255.0
   Default Gateway . . . . . . . . . :
   DNS Servers . . . . . . . . . . . : 10.0.0.53
                                       10.0.0.54
   NetBIOS over Tcpip. . . . . . . . : Enabled

Wireless LAN adapter Wi-Fi:

   Connection-specific DNS Suffix  . : home
   Description . . . . . . . . . . . : Intel(R) Wi-Fi 6 AX201 160MHz
   Physical Address. . . . . . . . . : 3C-A9-F4-11-22-33
   DHCP Enabled. . . . . . . . . . . : Yes
   IPv6 Address. . . . . . . . . . . : 2a02:1234:5678::1a(Preferred)
   Link-local IPv6 Address . . . . . : fe80::1c2d:3e4f:5a6b:7c8d%12(Preferred)
   IPv4 Address. . . . . . . . . . . : 192.168.1.23(Preferred)
   Subnet Mask . . . . . . . . . . . : 255.255.255.0
   Lease Obtained. . . . . . . . . . : Monday, 1 December 2025 08:12:03
   Default Gateway . . . . . . . . . : fe80::1%12
                                       192.168.1.1
   DHCP Server . . . . . . . . . . . : 192.168.1.1
   DNS Servers . . . . . . . . . . . : 192.168.1.1
   NetBIOS over Tcpip. . . . . . . . : Enabled
"""

IP_JSON = json.dumps(
    [
        {
            "ifname": "lo",
            "flags": ["LOOPBACK", "UP", "LOWER_UP"],
            "operstate": "UNKNOWN",
            "address": "00:00:00:00:00:00",
            "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
        },
        {
            "ifname": "wlp2s0",
            "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
            "operstate": "UP",
            "address": "3c:a9:f4:11:22:33",
            "addr_info": [
                {"family": "inet", "local": "192.168.1.23", "prefixlen": 24},
                {"family": "inet6", "local": "fe80::1c2d:3e4f:5a6b:7c8d", "prefixlen": 64},
            ],
        },
        {
            "ifname": "tun0",
            "flags": ["POINTOPOINT", "MULTICAST", "NOARP", "UP", "LOWER_UP"],
            "operstate": "UNKNOWN",
            "addr_info": [{"family": "inet", "local": "10.8.0.6", "prefixlen": 24}],
        },
        {"ifname": "eth0", "flags": ["NO-CARRIER", "BROADCAST", "UP"], "operstate": "DOWN", "addr_info": []},
    ]
)


def test_pmset_battery_states() -> None:
    assert d.parse_pmset(PMSET_ON_BATTERY) == ["battery 76% (discharging)", "on battery power"]
    assert d.parse_pmset(PMSET_CHARGING) == ["battery 95% (charging)", "on AC power"]
    assert d.parse_pmset(PMSET_DESKTOP) == ["no battery (a desktop, or none reported)"]


def test_sysctl_boottime_and_proc_uptime() -> None:
    assert d.parse_boottime(SYSCTL_BOOTTIME, 1764750000 + 3 * 3600 + 5 * 60) == 3 * 3600 + 5 * 60
    with pytest.raises(ValueError):
        d.parse_boottime("kern.boottime: unknown", 0.0)
    assert d.parse_proc_uptime("76267.46 126305.93\n") == 76267.46


def test_ifconfig_interfaces_without_mac_addresses() -> None:
    found = d.parse_ifconfig(IFCONFIG)
    assert found == [
        Interface("lo0", True, ("127.0.0.1/8", "::1/128"), loopback=True),
        Interface("en0", True, ("192.168.1.42/24",)),
        Interface("en1", False),
        Interface("utun0", True),
        Interface("utun3", True, ("10.8.0.6/32",)),
    ]
    assert d.network_lines(found) == ["en0: 192.168.1.42/24", "utun0: no address", "utun3: 10.8.0.6/32"]
    assert d.vpn_lines(found) == ["VPN adapter up: utun3"]


def test_scutil_dns_servers_once_each() -> None:
    assert d.parse_scutil_dns(SCUTIL_DNS) == ["10.0.0.53", "10.0.0.54", "192.168.1.1"]


def test_ipconfig_adapters_and_dns_servers_without_host_name_or_mac() -> None:
    found, servers = d.parse_ipconfig(IPCONFIG_ALL)
    assert [(one.name, one.up, one.addresses) for one in found] == [
        ("Ethernet", False, ()),
        ("Ethernet 2", True, ("10.20.30.40",)),
        ("Wi-Fi", True, ("2a02:1234:5678::1a", "192.168.1.23")),
    ]
    assert servers == ["10.0.0.53", "10.0.0.54", "192.168.1.1"]
    text = "\n".join(d.network_lines(found) + d.vpn_lines(found))
    assert text == (
        "Ethernet 2: 10.20.30.40\n"
        "Wi-Fi: 2a02:1234:5678::1a, 192.168.1.23\n"
        "VPN adapter up: Ethernet 2 "
        "(Cisco AnyConnect Virtual Miniport Adapter for Windows x64)"
    )
    assert "DANA" not in text and "8C-16" not in text


def test_ip_json_and_resolv_conf() -> None:
    found = d.parse_ip_json(IP_JSON)
    assert [(one.name, one.up, one.loopback) for one in found] == [
        ("lo", True, True),
        ("wlp2s0", True, False),
        ("tun0", True, False),
        ("eth0", False, False),
    ]
    assert d.network_lines(found) == ["wlp2s0: 192.168.1.23/24", "tun0: 10.8.0.6/24"]
    assert d.vpn_lines(found) == ["VPN adapter up: tun0"]
    resolv = (
        "# generated\nsearch corp.example\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver ::1\n"
    )
    assert d.parse_resolv_conf(resolv) == ["10.0.0.53", "::1"]


def test_windows_power_status() -> None:
    assert d.describe_windows_power(1, 128, 255) == ["no battery (a desktop, or none reported)"]
    assert d.describe_windows_power(0, 1, 64) == ["battery 64%", "on battery power"]
    assert d.describe_windows_power(1, 8, 80) == ["battery 80% (charging)", "on AC power"]
    assert d.describe_windows_power(255, 255, 255) == ["battery unknown", "power source unknown"]


def test_linux_power_supply_tree(tmp_path: Path) -> None:
    def supply(name: str, **files: str) -> None:
        (tmp_path / name).mkdir()
        for key, value in files.items():
            (tmp_path / name / key).write_text(value + "\n")

    supply("AC", type="Mains", online="1")
    supply("BAT0", type="Battery", capacity="57", status="Charging")
    supply("hidpp_battery_0", type="Battery", scope="Device", capacity="20", status="Discharging")
    assert d.linux_power_lines(tmp_path) == ["battery 57% (charging)", "on AC power"]
    assert d.linux_power_lines(tmp_path / "missing") == ["no battery (a desktop, or none reported)"]


# ---------------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------------

ONLY_QUICK = DiagnosticsOptions(fields=("os", "uptime", "disk", "vpn"))


async def _run(tools: ToolRegistry, name: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    result = await tools.run(name, json.dumps(arguments))
    return result.ok, result.output


async def _ticket(tools: ToolRegistry) -> str:
    ok, answer = await _run(
        tools, "create_ticket", summary="VPN drops every hour", description="It drops.", category="network"
    )
    assert ok, answer
    ticket_id: str = answer["ticket_id"]
    return ticket_id


async def test_the_tool_refuses_without_consent(tmp_path: Path, file_keyring: FileKeyring) -> None:
    tools = default_registry(tmp_path / "outbox", diagnostics=ONLY_QUICK)
    ticket_id = await _ticket(tools)
    for arguments in ({"ticket": ticket_id, "user_agreed": False}, {"ticket": ticket_id}):
        ok, output = await _run(tools, "attach_diagnostics", **arguments)
        assert not ok and output["error"]["type"] == "consent_needed"
        assert "Ask the user first" in output["error"]["message"]
        assert "the operating system, uptime, free disk space" in output["error"]["message"]
    assert TicketOutbox(tmp_path / "outbox", keys=DataKeyring()).notes(ticket_id) == []


async def test_the_report_reaches_the_ticket_system_as_a_comment(
    worker: DeliveryWorker, system: MemorySystem
) -> None:
    tools = default_registry(delivery=worker, diagnostics=ONLY_QUICK)
    assert (
        "the operating system, uptime"
        in next(s for s in tools.specs() if s.name == "attach_diagnostics").description
    )
    ticket_id = await _ticket(tools)
    ok, output = await _run(tools, "attach_diagnostics", ticket=ticket_id, user_agreed=True)
    assert ok, output
    assert output["attached_to"] == ticket_id and ticket_id in output["message"]
    shown: str = output["shown"]
    assert [line.split(":")[0] for line in shown.splitlines() if not line.startswith(" ")] == [
        "Diagnostics from the user's computer (sent with their consent)",
        "Operating system",
        "Uptime",
        "Disk space",
        "VPN",
    ]
    deadline = time.monotonic() + 5
    while not system.comments and time.monotonic() < deadline:
        time.sleep(0.02)
    assert system.comments == {1: [shown]}
    assert _personal(shown) == []


async def test_without_a_ticket_system_the_note_waits_in_the_outbox(
    tmp_path: Path, file_keyring: FileKeyring
) -> None:
    tools = default_registry(tmp_path / "outbox", diagnostics=ONLY_QUICK)
    ticket_id = await _ticket(tools)
    ok, output = await _run(tools, "attach_diagnostics", ticket=ticket_id.lower(), user_agreed=True)
    assert ok, output
    [(_name, text)] = TicketOutbox(tmp_path / "outbox", keys=DataKeyring()).notes(ticket_id)
    assert text == output["shown"]


async def test_an_unknown_ticket_is_refused(tmp_path: Path, file_keyring: FileKeyring) -> None:
    tools = default_registry(tmp_path / "outbox", diagnostics=ONLY_QUICK)
    ok, output = await _run(tools, "attach_diagnostics", ticket="HD-9999", user_agreed=True)
    assert not ok and output["error"]["type"] == "not_found"
    ok, output = await _run(tools, "attach_diagnostics", ticket="my laptop", user_agreed=True)
    assert not ok and output["error"]["type"] == "invalid_ticket"


def test_a_policy_that_disables_diagnostics_leaves_the_tool_out(tmp_path: Path) -> None:
    assert "attach_diagnostics" in default_registry(tmp_path, diagnostics=DiagnosticsOptions())
    assert "attach_diagnostics" not in default_registry(
        tmp_path, diagnostics=DiagnosticsOptions(enabled=False)
    )
    assert "attach_diagnostics" not in default_registry(tmp_path)


def test_the_launch_plan_carries_the_policys_diagnostics(env: dict[str, str]) -> None:
    Path(env["HELPDESK_VOICE_POLICY"]).write_text(
        'locked = ["diagnostics.enabled", "diagnostics.fields"]\n'
        '[diagnostics]\nenabled = true\nfields = ["os", "vpn"]\nhosts = ["intranet.contoso.example"]\n'
    )
    plan = plan_from_settings(load_settings(None, env), env)
    assert plan.diagnostics == config.DiagnosticsSettings(True, ("os", "vpn"), ("intranet.contoso.example",))
