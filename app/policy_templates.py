"""The policy templates admins load into their management tools, generated from the settings schema.

``python -m app.policy_templates DIR`` writes:

- ``windows/HelpdeskVoice.admx`` and ``windows/en-US/HelpdeskVoice.adml``: one Group Policy per
  setting, under Computer Configuration > Administrative Templates > Helpdesk Voice, writing the
  registry values :mod:`app.os_policy` reads (choices as drop-down lists with their labels,
  true/false as a check box, whole numbers as a number box with the schema's bounds, lists as
  multi-line text, other values, decimals among them, as text);
- ``macos/com.helpdeskvoice.app.mobileconfig``: an example configuration profile with a few
  representative settings, to copy and edit;
- ``linux/policy.toml``: every setting, commented out, with its default and what it does.

The files in ``packaging/policy/`` are this module's output, and a test regenerates them and
compares, so a setting added to the schema without regenerating fails the tests instead of being
missing from the templates.
"""

from __future__ import annotations

import json
import plistlib
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from app.config import SETTINGS, IntRange, Setting, Value
from app.os_policy import BUNDLE_ID, REGISTRY_KEY

__all__ = ["ADML_PATH", "ADMX_PATH", "LINUX_PATH", "MACOS_PATH", "main", "render", "write_templates"]

ADMX_PATH: Final = Path("windows") / "HelpdeskVoice.admx"
ADML_PATH: Final = Path("windows") / "en-US" / "HelpdeskVoice.adml"
MACOS_PATH: Final = Path("macos") / f"{BUNDLE_ID}.mobileconfig"
LINUX_PATH: Final = Path("linux") / "policy.toml"

_NS: Final = "http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions"
_ROOT_CATEGORY: Final = "HelpdeskVoice"
_SUPPORTED: Final = "SUPPORTED_HelpdeskVoice"
_TEXT_MAX: Final = 8192  # Group Policy's own default (1023) is shorter than the built-in instructions
_GROUP_NAMES: Final = {"": "General", "kb": "Knowledge base", "barge_in": "Barge-in"}
# The example profile: where speech goes, what is kept, which tools, one true/false.
_PROFILE_EXAMPLE: Final[dict[str, Value]] = {
    "backend": "custom",
    "endpoint.url": "wss://voice.example.com/realtime",
    "transcript.retention_days": 0,
    "tools.allowed": ("search_knowledge_base", "create_ticket", "request_human"),
    "push_to_talk": False,
}
# Fixed, so the generated profile is the same on every run; an admin's copy gets their own.
_PROFILE_UUID: Final = uuid.uuid5(uuid.NAMESPACE_DNS, f"{BUNDLE_ID}.example-profile")


def _group(key: str) -> str:
    return key.rpartition(".")[0]


def _ident(text: str) -> str:
    """A Group Policy name or string id: letters, digits and underscores only."""
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def _title(key: str) -> str:
    words = key.rpartition(".")[2].replace("_", " ")
    return f"{words[:1].upper()}{words[1:]} ({key})"


def _group_title(group: str) -> str:
    return _GROUP_NAMES.get(group, group.replace("_", " ").capitalize())


def _shown(value: Value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "none"
    if value == "":
        return "empty"
    text = " ".join(str(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _explain(setting: Setting) -> str:
    # The help is written to follow a key name in lower case ("ws:// or wss:// URL..."), so it does.
    lines = [f"{setting.key}: {setting.help}." if setting.help else f"The setting {setting.key}."]
    if setting.choices:
        lines.append("Choices: " + "; ".join(f"{label} ({value})" for value, label in setting.choices) + ".")
    if setting.kind is tuple:
        lines.append("One name per line.")
    elif setting.kind is float:
        lines.append("A number, with a dot for decimals.")
    lines.append(f"Built-in value: {_shown(setting.default)}.")
    lines.append(
        "Enabled: this value is set and locked; users cannot change it. Not configured: the policy "
        "file or the user decides."
    )
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Windows: ADMX and ADML
# ---------------------------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{_NS}}}{tag}", attributes)
    if text is not None:
        element.text = text
    return element


def _xml(root: ET.Element) -> str:
    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _element(policy: ET.Element, presentation: ET.Element, setting: Setting, strings: dict[str, str]) -> None:
    """The policy's one value (ADMX) and the control an admin sets it with (ADML)."""
    elements = _sub(policy, "elements")
    name = _ident(setting.key)
    label = _title(setting.key)
    if setting.choices:
        enum = _sub(elements, "enum", id=name, valueName=setting.key, required="true")
        for value, text in setting.choices:
            string_id = _ident(f"{setting.key}_{value}")
            strings[string_id] = text
            item = _sub(enum, "item", displayName=f"$(string.{string_id})")
            _sub(_sub(item, "value"), "string", value)
        default = setting.choice_values.index(str(setting.default))
        _sub(presentation, "dropdownList", label, refId=name, noSort="true", defaultItem=str(default))
    elif setting.kind is bool:
        boolean = _sub(elements, "boolean", id=name, valueName=setting.key)
        _sub(_sub(boolean, "trueValue"), "decimal", value="1")
        _sub(_sub(boolean, "falseValue"), "decimal", value="0")
        _sub(
            presentation, "checkBox", label, refId=name, defaultChecked="true" if setting.default else "false"
        )
    elif setting.kind is int and isinstance(setting.check, IntRange):
        _sub(
            elements,
            "decimal",
            id=name,
            valueName=setting.key,
            required="true",
            minValue=str(setting.check.low),
            maxValue=str(setting.check.high),
        )
        _sub(presentation, "decimalTextBox", label, refId=name, defaultValue=str(setting.default))
    elif setting.kind is tuple:
        _sub(elements, "multiText", id=name, valueName=setting.key)
        _sub(presentation, "multiTextBox", label, refId=name)
    else:  # text, and numbers Group Policy's whole-number box cannot hold (decimals, unbounded)
        _sub(elements, "text", id=name, valueName=setting.key, maxLength=str(_TEXT_MAX))
        box = _sub(presentation, "textBox", refId=name)
        _sub(box, "label", label)
        if setting.default not in ("", ()):
            _sub(
                box,
                "defaultValue",
                _shown(setting.default) if setting.kind is not str else str(setting.default),
            )


def render_admx_adml() -> tuple[str, str]:
    ET.register_namespace("", _NS)
    admx = ET.Element(f"{{{_NS}}}policyDefinitions", revision="1.0", schemaVersion="1.0")
    adml = ET.Element(f"{{{_NS}}}policyDefinitionResources", revision="1.0", schemaVersion="1.0")
    _sub(adml, "displayName", "Helpdesk Voice")
    _sub(adml, "description", "Group Policy settings of Helpdesk Voice, the spoken IT helpdesk assistant.")
    namespaces = _sub(admx, "policyNamespaces")
    _sub(namespaces, "target", prefix="helpdeskvoice", namespace="HelpdeskVoice.Policies")
    _sub(admx, "resources", minRequiredRevision="1.0")
    supported = _sub(_sub(admx, "supportedOn"), "definitions")
    _sub(supported, "definition", name=_SUPPORTED, displayName=f"$(string.{_SUPPORTED})")
    categories = _sub(admx, "categories")
    policies = _sub(admx, "policies")
    resources = _sub(adml, "resources")
    string_table = _sub(resources, "stringTable")
    presentation_table = _sub(resources, "presentationTable")
    strings: dict[str, str] = {
        _ROOT_CATEGORY: "Helpdesk Voice",
        _SUPPORTED: "Helpdesk Voice on Windows 10 or later",
    }
    _sub(categories, "category", name=_ROOT_CATEGORY, displayName=f"$(string.{_ROOT_CATEGORY})")
    seen_groups: set[str] = set()
    for setting in SETTINGS.values():
        group = _group(setting.key)
        category = _ROOT_CATEGORY if not group else _ident(f"{_ROOT_CATEGORY}_{group}")
        if group and group not in seen_groups:
            seen_groups.add(group)
            strings[category] = _group_title(group)
            element = _sub(categories, "category", name=category, displayName=f"$(string.{category})")
            _sub(element, "parentCategory", ref=_ROOT_CATEGORY)
        name = _ident(setting.key)
        strings[name] = _title(setting.key)
        strings[f"{name}_Help"] = _explain(setting)
        policy = _sub(
            policies,
            "policy",
            name=name,
            **{"class": "Machine"},
            displayName=f"$(string.{name})",
            explainText=f"$(string.{name}_Help)",
            presentation=f"$(presentation.{name})",
            key=REGISTRY_KEY,
        )
        _sub(policy, "parentCategory", ref=category)
        _sub(policy, "supportedOn", ref=_SUPPORTED)
        presentation = _sub(presentation_table, "presentation", id=name)
        _element(policy, presentation, setting, strings)
    for string_id, text in strings.items():
        _sub(string_table, "string", text, id=string_id)
    # The string table comes before the presentations in the ADML schema, so it was made first
    # and filled last.
    return _xml(admx), _xml(adml)


# ---------------------------------------------------------------------------------------------------
# macOS and Linux
# ---------------------------------------------------------------------------------------------------


def render_mobileconfig() -> bytes:
    settings: dict[str, object] = {
        key: list(value) if isinstance(value, tuple) else value for key, value in _PROFILE_EXAMPLE.items()
    }
    payload: dict[str, object] = {
        "PayloadType": BUNDLE_ID,
        "PayloadIdentifier": f"{BUNDLE_ID}.settings",
        "PayloadUUID": str(uuid.uuid5(_PROFILE_UUID, "settings")).upper(),
        "PayloadVersion": 1,
        "PayloadDisplayName": "Helpdesk Voice settings",
        **settings,
    }
    profile: dict[str, object] = {
        "PayloadContent": [payload],
        "PayloadDescription": (
            "Example: sets and locks where Helpdesk Voice sends speech, what it keeps and which tools "
            "it may use. Give it your own identifiers and UUIDs before you deploy it."
        ),
        "PayloadDisplayName": "Helpdesk Voice policy (example)",
        "PayloadIdentifier": f"{BUNDLE_ID}.policy",
        "PayloadScope": "System",
        "PayloadType": "Configuration",
        "PayloadUUID": str(_PROFILE_UUID).upper(),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, sort_keys=True)


def _toml(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_policy_toml() -> str:
    out = [
        "# Helpdesk Voice site policy: copy to /etc/helpdesk-voice/policy.toml, then uncomment and set",
        "# the keys to enforce. A value here is the starting point users may change, unless its key is",
        "# also in `locked`, which pins it for everyone:",
        '#   locked = ["backend", "endpoint.url"]',
        "# Every key is shown with its built-in value. Secrets (the API key) never go here.",
        "",
    ]
    for setting in SETTINGS.values():
        if setting.help:
            out.append(f"# {setting.help}")
        if setting.choices:
            out.append("# one of: " + ", ".join(f"{value} ({label})" for value, label in setting.choices))
        out.append(f"# {setting.key} = {_toml(setting.default)}")
        out.append("")
    return "\n".join(out)


def render() -> dict[Path, bytes]:
    """Every template, by its path under the output folder."""
    admx, adml = render_admx_adml()
    return {
        ADMX_PATH: admx.encode("utf-8"),
        ADML_PATH: adml.encode("utf-8"),
        MACOS_PATH: render_mobileconfig(),
        LINUX_PATH: render_policy_toml().encode("utf-8"),
    }


def write_templates(folder: Path) -> list[Path]:
    written = []
    for relative, data in render().items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m app.policy_templates DIR", file=sys.stderr)
        return 2
    for path in write_templates(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
