"""Renders the app icon (icons/app.svg in the app's assets) into the containers the installers need:
helpdesk-voice.ico (Windows executables, Add/Remove Programs) and helpdesk-voice.icns (the macOS
bundle), both holding PNG images, which every supported Windows and macOS version reads.

    python packaging/icons.py build/icons

Written here rather than with Pillow or iconutil so that the one source (the SVG) is rendered the
same way on every build machine, with Qt, which the app already depends on; the spec calls it on
Windows and macOS.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Windows picks the nearest size for each place (taskbar, Explorer's views, Add/Remove Programs).
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# The icns types that hold PNG data, by pixel size (ic11-ic14 are the Retina 2x variants).
ICNS_TYPES = (
    (b"icp4", 16),
    (b"icp5", 32),
    (b"ic07", 128),
    (b"ic08", 256),
    (b"ic09", 512),
    (b"ic10", 1024),
    (b"ic11", 32),
    (b"ic12", 64),
    (b"ic13", 256),
    (b"ic14", 512),
)


def source_svg() -> Path:
    """The app icon where the app itself finds its assets (a checkout's or the installed package's)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app.paths import assets_dir

    return assets_dir() / "icons" / "app.svg"


def render_png(size: int, source: Path) -> bytes:
    """The SVG drawn at ``size`` x ``size`` pixels, as PNG bytes."""
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    # Build machines have no display; Qt's text and painting need an application object anyway.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(source))
    if not renderer.isValid():
        raise ValueError(f"{source} is not an SVG Qt can draw")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    with tempfile.TemporaryDirectory() as folder:
        png = Path(folder) / "icon.png"
        if not image.save(str(png)):
            raise RuntimeError("Qt could not write a PNG")
        return png.read_bytes()


def ico(images: dict[int, bytes]) -> bytes:
    """An ICO file with one PNG entry per size (0 in the directory means 256)."""
    header = struct.pack("<HHH", 0, 1, len(images))
    offset = len(header) + 16 * len(images)
    directory = b""
    payload = b""
    for size, png in sorted(images.items()):
        side = 0 if size >= 256 else size
        directory += struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(png), offset + len(payload))
        payload += png
    return header + directory + payload


def icns(images: dict[int, bytes]) -> bytes:
    """An icns file: a big-endian length-prefixed list of typed PNG entries."""
    body = b""
    for kind, size in ICNS_TYPES:
        png = images[size]
        body += kind + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python packaging/icons.py OUTPUT_FOLDER", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    sizes = set(ICO_SIZES) | {size for _, size in ICNS_TYPES}
    source = source_svg()
    images = {size: render_png(size, source) for size in sorted(sizes)}
    (out / "helpdesk-voice.ico").write_bytes(ico({size: images[size] for size in ICO_SIZES}))
    (out / "helpdesk-voice.icns").write_bytes(icns(images))
    print(f"icons written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
