#!/usr/bin/env bash
# Builds the Debian/Ubuntu package: the app frozen with a bundled Python (PyInstaller, one folder)
# under /opt/helpdesk-voice, with /usr/bin/helpdesk-voice, a desktop entry and its icon.
#   bash packaging/linux/build-deb.sh            -> build/helpdesk-voice_<version>_<arch>.deb
# Needs the app and PyInstaller in .venv (scripts/install.sh --test, then this script installs the
# "build" extra) and dpkg-deb. User data (settings, transcripts, tickets) lives in each user's home
# and is never part of the package: removing it keeps that data.
set -euo pipefail
cd "$(dirname "$0")/../.."

python=.venv/bin/python
"$python" -m pip install -q -e ".[build]"
version=$("$python" -c "from importlib.metadata import version; print(version('helpdesk-voice'))")
assets=$("$python" -c "from app.paths import assets_dir; print(assets_dir())")
arch=$(dpkg --print-architecture)
out=build/helpdesk-voice_${version}_${arch}.deb
root=build/deb-root

echo "freezing helpdesk-voice ${version} (PyInstaller)..."
rm -rf build/dist/helpdesk-voice "$root"
"$python" -m PyInstaller --noconfirm --log-level WARN --distpath build/dist --workpath build/pyinstaller \
  packaging/pyinstaller/helpdesk-voice.spec

echo "assembling the package..."
install -d "$root/DEBIAN" "$root/opt" "$root/usr/bin" "$root/usr/share/applications" \
  "$root/usr/share/icons/hicolor/scalable/apps" "$root/usr/share/doc/helpdesk-voice"
cp -a build/dist/helpdesk-voice "$root/opt/helpdesk-voice"
ln -s /opt/helpdesk-voice/helpdesk-voice "$root/usr/bin/helpdesk-voice"
install -m 644 packaging/linux/helpdesk-voice.desktop "$root/usr/share/applications/"
install -m 644 "$assets/icons/app.svg" "$root/usr/share/icons/hicolor/scalable/apps/helpdesk-voice.svg"
install -m 644 LICENSE THIRD_PARTY_NOTICES.md "$root/usr/share/doc/helpdesk-voice/"
installed_kb=$(du -sk "$root" | cut -f1)
sed -e "s/@VERSION@/${version}/" -e "s/@ARCH@/${arch}/" -e "s/@SIZE@/${installed_kb}/" \
  packaging/linux/control.in > "$root/DEBIAN/control"
install -m 755 packaging/linux/postinst packaging/linux/postrm "$root/DEBIAN/"

# gzip at level 6: xz would save a third of the size and cost minutes on two cores.
dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$out" >/dev/null
rm -rf "$root"
echo "built $out ($(du -h "$out" | cut -f1))"
