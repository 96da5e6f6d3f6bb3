"""The Windows MSI and macOS pkg definitions and the installers' CI workflow, checked for what can be
checked on Linux: structure, the values that must agree across files, and that every script they
name exists. They are built and installed only on hosted runners (.github/workflows/installers.yml).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import plistlib
import re
import shutil
import struct
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from app.os_policy import BUNDLE_ID

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
WXS = PACKAGING / "windows" / "helpdesk-voice.wxs"
BUILD_MSI = PACKAGING / "windows" / "build-msi.ps1"
SPEC = PACKAGING / "pyinstaller" / "helpdesk-voice.spec"
MACOS = PACKAGING / "macos"
WORKFLOW = ROOT / ".github" / "workflows" / "installers.yml"
WIX = "{http://wixtoolset.org/schemas/v4/wxs}"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
PKG_ID = "com.helpdeskvoice.app.pkg"


def _wxs() -> ET.Element:
    return ET.parse(WXS).getroot()


def _one(root: ET.Element, path: str) -> ET.Element:
    found = root.findall(path)
    assert len(found) == 1, f"{path}: {len(found)} elements"
    return found[0]


def test_the_msi_is_a_per_machine_package_with_a_stable_upgrade_code() -> None:
    root = _wxs()
    assert root.tag == f"{WIX}Wix"
    package = _one(root, f"{WIX}Package")
    assert package.get("Scope") == "perMachine"
    assert package.get("Name") == "Helpdesk Voice"
    upgrade_code = package.get("UpgradeCode", "")
    assert str(uuid.UUID(upgrade_code)).upper() == upgrade_code  # a literal GUID, never generated
    assert package.get("Version") == "$(var.Version)"
    major = _one(package, f"{WIX}MajorUpgrade")
    assert major.get("DowngradeErrorMessage")
    assert _one(package, f"{WIX}MediaTemplate").get("EmbedCab") == "yes"


def test_the_msi_installs_the_harvested_folder_under_program_files() -> None:
    root = _wxs()
    program_files = _one(root, f".//{WIX}StandardDirectory[@Id='ProgramFiles64Folder']")
    install = _one(program_files, f"{WIX}Directory")
    assert (install.get("Id"), install.get("Name")) == ("INSTALLFOLDER", "Helpdesk Voice")
    group = _one(root, f".//{WIX}ComponentGroup[@Id='AppFiles']")
    assert group.get("Directory") == "INSTALLFOLDER"
    files = _one(group, f"{WIX}Files")
    assert files.get("Include") == r"!(bindpath.App)\**"
    # The GUI executable is authored by hand (its id is what the shortcut and the Run value use),
    # so the harvest must leave it out or it would be installed twice.
    assert _one(files, f"{WIX}Exclude").get("Files") == r"!(bindpath.App)\helpdesk-voice.exe"
    gui = _one(root, f".//{WIX}File[@Id='GuiExe']")
    assert gui.get("Source") == r"!(bindpath.App)\helpdesk-voice.exe"
    main = _one(root, f".//{WIX}Feature[@Id='Main']")
    assert main.get("Level") == "1"
    assert {ref.get("Id") for ref in main} == {"AppFiles", "GuiExecutable"}
    assert package_feature_ids(root) == {"Main", "StartAtLogin"}


def package_feature_ids(root: ET.Element) -> set[str | None]:
    return {feature.get("Id") for feature in root.iter(f"{WIX}Feature")}


def test_the_msi_has_a_start_menu_shortcut_to_the_gui_executable() -> None:
    root = _wxs()
    assert root.find(f".//{WIX}StandardDirectory[@Id='ProgramMenuFolder']") is not None
    gui = _one(root, f".//{WIX}File[@Id='GuiExe']")
    shortcut = _one(gui, f"{WIX}Shortcut")
    assert shortcut.get("Directory") == "ProgramMenuFolder"
    assert shortcut.get("Name") == "Helpdesk Voice"
    assert shortcut.get("Advertise") == "no"


def test_start_at_login_is_an_hklm_run_value_off_by_default() -> None:
    root = _wxs()
    feature = _one(root, f".//{WIX}Feature[@Id='StartAtLogin']")
    # Above INSTALLLEVEL (1 unless changed): not installed unless START_AT_LOGIN=1 or ADDLOCAL asks.
    assert int(feature.get("Level", "0")) > 1
    level = _one(feature, f"{WIX}Level")
    assert (level.get("Value"), level.get("Condition")) == ("1", "START_AT_LOGIN = 1")
    (component_ref,) = feature.findall(f"{WIX}ComponentRef")
    component = _one(root, f".//{WIX}Component[@Id='{component_ref.get('Id')}']")
    value = _one(component, f"{WIX}RegistryValue")
    assert (value.get("Root"), value.get("Key"), value.get("KeyPath")) == ("HKLM", RUN_KEY, "yes")
    assert value.get("Value") == '"[#GuiExe]"'  # quoted: the path has a space in it
    prop = _one(root, f".//{WIX}Property[@Id='START_AT_LOGIN']")
    assert prop.get("Secure") == "yes"


def test_the_build_script_defines_every_variable_and_bind_path_the_msi_uses() -> None:
    source = WXS.read_text(encoding="utf-8")
    script = BUILD_MSI.read_text(encoding="utf-8")
    variables = set(re.findall(r"\$\(var\.(\w+)\)", source))
    assert variables == {"Version", "IconFile"}
    for name in variables:
        assert f'"{name}=' in script, name
    for name in set(re.findall(r"!\(bindpath\.(\w+)\)", source)):
        assert f'"{name}=$Dist"' in script, name
    assert '"packaging\\windows\\helpdesk-voice.wxs"' in script
    assert '"packaging\\pyinstaller\\helpdesk-voice.spec"' in script
    # Signed only with both secrets, time-stamped, executables before the MSI that carries them.
    assert "$env:WINDOWS_CERT_PFX_BASE64 -and $env:WINDOWS_CERT_PASSWORD" in script
    assert '"/tr", $timestamp' in script and '"/fd", "SHA256"' in script
    assert script.index("Invoke-Sign @((Join-Path $Dist") < script.index("Invoke-Sign @($Msi)")


def _spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"))


def _constants(tree: ast.Module) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def _keyword(call: ast.Call, name: str) -> ast.expr:
    (value,) = [keyword.value for keyword in call.keywords if keyword.arg == name]
    return value


def _evaluate(node: ast.expr, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return constants[node.id]
    return ast.literal_eval(node)


def test_the_macos_bundle_asks_for_the_microphone_and_stays_out_of_the_dock() -> None:
    tree = _spec_tree()
    constants = _constants(tree)
    (bundle,) = _calls(tree, "BUNDLE")
    assert _evaluate(_keyword(bundle, "name"), constants) == "Helpdesk Voice.app"
    # The managed-preferences domain: a configuration profile reaches the app only through it.
    assert _evaluate(_keyword(bundle, "bundle_identifier"), constants) == BUNDLE_ID
    info = _keyword(bundle, "info_plist")
    assert isinstance(info, ast.Dict)
    plist = {
        _evaluate(key, constants): _evaluate(value, constants)
        for key, value in zip(info.keys, info.values, strict=True)
        if key is not None
    }
    microphone = plist["NSMicrophoneUsageDescription"]
    assert isinstance(microphone, str) and len(microphone.split()) >= 8 and microphone.endswith(".")
    assert plist["LSUIElement"] is True


def test_the_spec_keeps_one_console_executable_on_linux_and_a_windowed_one_elsewhere() -> None:
    tree = _spec_tree()
    direct = _calls(tree, "EXE")
    assert len(direct) == 2  # Linux's own EXE(...) and the helper every other system uses
    linux = [call for call in direct if any(keyword.arg == "name" for keyword in call.keywords)]
    (linux_exe,) = [call for call in linux if isinstance(_keyword(call, "console"), ast.Constant)]
    assert ast.literal_eval(_keyword(linux_exe, "name")) == "helpdesk-voice"
    assert ast.literal_eval(_keyword(linux_exe, "console")) is True
    made = {
        (ast.literal_eval(call.args[0]), ast.literal_eval(_keyword(call, "console")))
        for call in _calls(tree, "_executable")
    }
    # Windows: the windowed app plus its console twin for the command line; macOS: the app.
    assert made == {("helpdesk-voice", False), ("helpdesk-voice-cli", True)}


def test_the_entitlements_are_the_audio_input_and_cffi_callbacks_only() -> None:
    with (MACOS / "entitlements.plist").open("rb") as file:
        entitlements = plistlib.load(file)
    # Adding one is a decision to document in entitlements.plist, not a side effect.
    assert entitlements == {
        "com.apple.security.device.audio-input": True,
        "com.apple.security.cs.allow-unsigned-executable-memory": True,
    }


def test_the_login_agent_starts_the_installed_app() -> None:
    with (MACOS / "com.helpdeskvoice.app.login.plist").open("rb") as file:
        agent = plistlib.load(file)
    assert agent["ProgramArguments"] == ["/Applications/Helpdesk Voice.app/Contents/MacOS/helpdesk-voice"]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] is False
    assert agent["LimitLoadToSessionType"] == "Aqua"


def test_the_pkg_installs_for_the_whole_machine_and_uninstalls_by_its_own_id() -> None:
    distribution = ET.parse(MACOS / "distribution.xml.in").getroot()
    domains = _one(distribution, "domains")
    assert domains.attrib == {
        "enable_anywhere": "false",
        "enable_currentUserHome": "false",
        "enable_localSystem": "true",
    }
    refs = {ref.get("id") for ref in distribution.iter("pkg-ref")}
    assert refs == {PKG_ID}
    build = (MACOS / "build-pkg.sh").read_text(encoding="utf-8")
    assert f"pkg_id={PKG_ID}" in build
    assert "helpdesk-voice-app.pkg" in build  # the component the distribution names
    assert "--options=runtime" not in build  # PyInstaller adds it when it signs (spec)
    assert "HELPDESK_VOICE_CODESIGN_IDENTITY" in SPEC.read_text(encoding="utf-8")
    assert "notarytool submit" in build and "stapler staple" in build
    uninstall = (MACOS / "uninstall.sh").read_text(encoding="utf-8")
    assert f"pkgutil --forget {PKG_ID}" in uninstall
    assert 'rm -rf "$app"' in uninstall and "Library/Application Support" not in uninstall.split("set -e")[1]


@pytest.mark.parametrize(
    "script",
    ["macos/build-pkg.sh", "macos/import-certificates.sh", "macos/uninstall.sh", "linux/build-deb.sh"],
)
def test_the_shell_scripts_parse(script: str) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    done = subprocess.run([bash, "-n", str(PACKAGING / script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _workflow() -> dict[str, Any]:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        pytest.skip("no YAML parser installed (the structure is still checked line by line)")
    loaded = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_workflow_builds_on_each_system() -> None:
    jobs = _workflow()["jobs"]
    assert {name: job["runs-on"] for name, job in jobs.items()} == {
        "windows": "windows-latest",
        "macos": "macos-latest",
        "linux": "ubuntu-latest",
    }
    for name, job in jobs.items():
        uploads = [
            step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/upload-artifact")
        ]
        assert uploads, f"{name} keeps no artifact"
        runs = " ".join(str(step.get("run", "")) for step in job["steps"])
        assert "--version" in runs and "smoke_serve.py" in runs, name


def test_the_workflow_structure_without_a_yaml_parser() -> None:
    lines = WORKFLOW.read_text(encoding="utf-8").splitlines()
    assert "jobs:" in lines
    assert not any("\t" in line for line in lines)  # YAML forbids tabs for indentation
    runners = [line.strip() for line in lines if line.strip().startswith("runs-on:")]
    assert runners == ["runs-on: windows-latest", "runs-on: macos-latest", "runs-on: ubuntu-latest"]


def test_every_script_the_workflow_runs_exists() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    named = set(re.findall(r"packaging[/\\][\w./\\-]+\.(?:sh|ps1|py)", text))
    assert {"packaging/windows/build-msi.ps1", "packaging/macos/build-pkg.sh"} <= named
    for path in named:
        assert (ROOT / path.replace("\\", "/")).is_file(), path


def test_every_secret_the_workflow_uses_is_read_by_a_script_and_documented() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    readme = (PACKAGING / "README.md").read_text(encoding="utf-8")
    scripts = "".join(path.read_text(encoding="utf-8") for path in (BUILD_MSI, *sorted(MACOS.glob("*.sh"))))
    secrets = set(re.findall(r"\$\{\{ secrets\.(\w+) \}\}", text))
    assert secrets == {
        "WINDOWS_CERT_PFX_BASE64",
        "WINDOWS_CERT_PASSWORD",
        "APPLE_CERTIFICATES_P12_BASE64",
        "APPLE_CERTIFICATES_P12_PASSWORD",
        "APPLE_DEVELOPER_ID_APP",
        "APPLE_DEVELOPER_ID_INSTALLER",
        "APPLE_ID",
        "APPLE_TEAM_ID",
        "APPLE_APP_PASSWORD",
    }
    for name in secrets:
        # Passed under its own name, read by a script under that name, and explained to admins.
        assert f"{name}: ${{{{ secrets.{name} }}}}" in text, name
        assert name in scripts, name
        assert f"`{name}`" in readme, name


def _icons_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("packaging_icons", PACKAGING / "icons.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_icon_containers_hold_the_pngs_they_list() -> None:
    icons = _icons_module()
    images = {size: b"\x89PNG" + bytes([size % 256]) * 7 for size in (16, 32, 256)}
    ico: bytes = icons.ico(images)
    assert struct.unpack("<HHH", ico[:6]) == (0, 1, 3)
    for index, size in enumerate(sorted(images)):
        side, _, _, _, _, _, length, offset = struct.unpack(
            "<BBBBHHII", ico[6 + 16 * index : 22 + 16 * index]
        )
        assert side == (0 if size == 256 else size)
        assert ico[offset : offset + length] == images[size]
    sizes = {size for _, size in icons.ICNS_TYPES}
    icns: bytes = icons.icns({size: b"\x89PNG" + bytes([size % 256]) for size in sizes})
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)
    position, kinds = 8, []
    while position < len(icns):
        kind, length = (
            icns[position : position + 4],
            struct.unpack(">I", icns[position + 4 : position + 8])[0],
        )
        kinds.append(kind)
        position += length
    assert position == len(icns) and kinds == [kind for kind, _ in icons.ICNS_TYPES]


def test_the_app_icon_renders(tmp_path: Path) -> None:
    # In its own process, as the spec runs it: a QGuiApplication made here would stay for the rest
    # of the session and stop pytest-qt from making the QApplication the widget tests need.
    done = subprocess.run(
        [sys.executable, str(PACKAGING / "icons.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "helpdesk-voice.ico").read_bytes()[:4] == b"\x00\x00\x01\x00"
    icns = (tmp_path / "helpdesk-voice.icns").read_bytes()
    assert icns[:4] == b"icns" and b"ic10" in icns
