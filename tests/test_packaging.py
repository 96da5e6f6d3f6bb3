"""The built wheel carries everything the app loads at run time, not only the Python files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from app.paths import assets_dir

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_assets(tmp_path: Path) -> None:
    # A copy of what the build reads, so the build leaves nothing behind in the working tree.
    source = tmp_path / "src"
    for folder in ("app", "assets"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("app/assets/")}
    assets = assets_dir()
    assert assets == ROOT / "assets"  # at the project's top level, shipped inside the package
    expected = {
        f"app/assets/{path.relative_to(assets).as_posix()}" for path in assets.rglob("*") if path.is_file()
    }
    assert expected and shipped == expected
    # What the app opens at run time is among them.
    assert {
        "app/assets/sounds/earcon.wav",
        "app/assets/icons/listening.svg",
        "app/assets/kb/password-reset.md",
    } <= shipped


def test_every_package_folder_is_listed_for_the_build() -> None:
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["packages"]
    )
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "app").rglob("__init__.py")}
    assert listed == found | {"app.assets"}
