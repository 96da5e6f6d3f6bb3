"""The committed policy templates are the generator's output, and each is what its tool expects."""

from __future__ import annotations

import plistlib
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from app import config, os_policy, policy_templates
from app.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "packaging" / "policy"
NS = "{http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions}"
REFERENCE = re.compile(r"\$\((string|presentation)\.([^)]+)\)")


def test_the_committed_templates_are_the_generators_output(tmp_path: Path) -> None:
    assert policy_templates.main([str(tmp_path)]) == 0
    generated = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    committed = sorted(path.relative_to(COMMITTED) for path in COMMITTED.rglob("*") if path.is_file())
    assert generated == committed
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (COMMITTED / relative).read_bytes(), (
            f"{relative} is out of date: run python -m app.policy_templates packaging/policy"
        )


def test_the_admx_and_adml_fit_together_and_cover_every_setting() -> None:
    admx = ET.parse(COMMITTED / policy_templates.ADMX_PATH).getroot()
    adml = ET.parse(COMMITTED / policy_templates.ADML_PATH).getroot()
    assert admx.tag == f"{NS}policyDefinitions"
    assert [child.tag.removeprefix(NS) for child in admx] == [
        "policyNamespaces",
        "resources",
        "supportedOn",
        "categories",
        "policies",
    ]
    assert adml.tag == f"{NS}policyDefinitionResources"
    strings = {s.get("id"): s.text for s in adml.iter(f"{NS}string")}
    presentations = {p.get("id"): p for p in adml.iter(f"{NS}presentation")}
    categories = {c.get("name") for c in admx.iter(f"{NS}category")}
    definitions = {d.get("name") for d in admx.iter(f"{NS}definition")}
    for element in admx.iter():
        for value in element.attrib.values():
            for table, name in REFERENCE.findall(value):
                assert name in (strings if table == "string" else presentations), f"{value} does not resolve"
    policies = list(admx.iter(f"{NS}policy"))
    by_value = {}
    for policy in policies:
        assert policy.get("key") == os_policy.REGISTRY_KEY and policy.get("class") == "Machine"
        parent = policy.find(f"{NS}parentCategory")
        supported = policy.find(f"{NS}supportedOn")
        assert parent is not None and parent.get("ref") in categories
        assert supported is not None and supported.get("ref") in definitions
        elements = policy.find(f"{NS}elements")
        assert elements is not None and len(elements) == 1
        element = elements[0]
        by_value[element.get("valueName")] = element
        presentation = presentations[policy.get("presentation", "")[len("$(presentation.") : -1]]
        controls = [control.get("refId") for control in presentation]
        assert controls == [element.get("id")]  # the control sets this policy's one value
    assert set(by_value) == set(config.SETTINGS)
    for key, setting in config.SETTINGS.items():
        element = by_value[key]
        kind = element.tag.removeprefix(NS)
        if setting.choices:
            assert kind == "enum"
            values = [item.findtext(f"{NS}value/{NS}string") for item in element]
            assert values == list(setting.choice_values)
            labels = [strings[REFERENCE.findall(item.get("displayName", ""))[0][1]] for item in element]
            assert labels == [label for _, label in setting.choices]
        elif setting.kind is bool:
            assert kind == "boolean"
        elif isinstance(setting.check, config.IntRange):
            assert kind == "decimal"
            assert (element.get("minValue"), element.get("maxValue")) == (
                str(setting.check.low),
                str(setting.check.high),
            )
        elif setting.kind is tuple:
            assert kind == "multiText"
        else:
            assert kind == "text"


def test_the_example_profile_parses_and_its_settings_are_real_and_valid(tmp_path: Path) -> None:
    profile = plistlib.loads((COMMITTED / policy_templates.MACOS_PATH).read_bytes())
    assert profile["PayloadType"] == "Configuration"
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == os_policy.BUNDLE_ID
    keys = {key for key in payload if not key.startswith("Payload")}
    assert keys and keys <= set(config.SETTINGS)
    for key in keys:
        config.validate_setting(
            key, payload[key] if not isinstance(payload[key], list) else ",".join(payload[key])
        )
    # Read the way macOS hands it over (the payload's keys in the managed preferences), nothing is refused.
    prefs = tmp_path / f"{os_policy.BUNDLE_ID}.plist"
    prefs.write_bytes(plistlib.dumps(payload))
    found = os_policy.read_managed_preferences(prefs)
    assert set(found.values) == keys


def test_the_linux_example_names_every_setting_and_uncommented_is_a_valid_policy(tmp_path: Path) -> None:
    text = (COMMITTED / policy_templates.LINUX_PATH).read_text("utf-8")
    assert tomllib.loads(text) == {}  # all commented out: installing it as is changes nothing
    lines = [line.removeprefix("# ") for line in text.splitlines() if re.match(r"# [a-z_.]+ = ", line)]
    policy = tmp_path / "policy.toml"
    policy.write_text("\n".join(lines) + "\n", "utf-8")
    assert set(tomllib.loads(policy.read_text("utf-8"))) >= {key.split(".")[0] for key in config.SETTINGS}
    (tmp_path / "user").mkdir()
    settings = load_settings(
        None, {config.POLICY_ENV: str(policy), config.CONFIG_DIR_ENV: str(tmp_path / "user")}
    )
    assert settings.problems == []
    assert all(settings.origin(key) == "policy" for key in config.SETTINGS)
