#!/usr/bin/env bash
# Builds the macOS installer: the app frozen with a bundled Python as "Helpdesk Voice.app"
# (PyInstaller), in a per-machine product archive that installs it in /Applications.
#   bash packaging/macos/build-pkg.sh        -> build/helpdesk-voice-<version>-<arch>.pkg
# Needs macOS 12+ with Xcode's command line tools and Python 3.11+ (PYTHON, default python3).
#
# Signing and notarisation happen when their variables are set (CI secrets; the certificates must be
# in a keychain already: packaging/macos/import-certificates.sh does that on a CI runner):
#   APPLE_DEVELOPER_ID_APP        "Developer ID Application: <Org> (<TEAMID>)": signs the app, with
#                                 the hardened runtime and packaging/macos/entitlements.plist
#   APPLE_DEVELOPER_ID_INSTALLER  "Developer ID Installer: <Org> (<TEAMID>)": signs the pkg
#   APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD
#                                 notarise the signed pkg (an app-specific password), then staple
# Without them the app is signed ad hoc and the pkg is unsigned: fine for testing on the build
# machine, refused by Gatekeeper anywhere else.
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${PYTHON:-python3}
venv=build/venv-macos
app_name="Helpdesk Voice.app"
app="build/dist/$app_name"
pkg_id=com.helpdeskvoice.app.pkg

mkdir -p build
# Its own virtual environment: the bundle carries exactly what pyproject.toml asks for.
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q ".[build]"
version=$("$venv/bin/python" -c "from importlib.metadata import version; print(version('helpdesk-voice'))")
arch=$(uname -m)
out=build/helpdesk-voice-${version}-${arch}.pkg

if [ -n "${APPLE_DEVELOPER_ID_APP:-}" ]; then
  # Read by the spec: PyInstaller signs each library and then the bundle with this identity,
  # hardened runtime and timestamp included (inside out, as codesign requires).
  export HELPDESK_VOICE_CODESIGN_IDENTITY="$APPLE_DEVELOPER_ID_APP"
  export HELPDESK_VOICE_ENTITLEMENTS="$PWD/packaging/macos/entitlements.plist"
else
  echo "APPLE_DEVELOPER_ID_APP not set: the app is signed ad hoc"
fi

echo "freezing helpdesk-voice ${version} (PyInstaller)..."
rm -rf "$app" build/dist/helpdesk-voice
"$venv/bin/python" -m PyInstaller --noconfirm --log-level WARN --distpath build/dist \
  --workpath build/pyinstaller packaging/pyinstaller/helpdesk-voice.spec

codesign --verify --deep --strict --verbose=2 "$app"
plutil -lint "$app/Contents/Info.plist"
"$app/Contents/MacOS/helpdesk-voice" --version
if [ -n "${APPLE_DEVELOPER_ID_APP:-}" ]; then
  # What notarisation checks first: the runtime flag and the entitlements are on the executable.
  codesign --display --verbose=2 "$app" 2>&1 | grep -q "flags=.*runtime" || {
    echo "the app is not signed with the hardened runtime" >&2
    exit 1
  }
  codesign --display --entitlements - "$app"
fi

echo "assembling the package..."
root=build/pkg-root
components=build/pkg-components
rm -rf "$root" "$components"
mkdir -p "$root/Applications" "$components"
# ditto keeps the bundle's symlinks, extended attributes and signatures as they are; cp -R may not.
ditto "$app" "$root/Applications/$app_name"
# Not relocatable: otherwise Installer looks for the bundle identifier anywhere on the disk and
# "upgrades" a stray copy (a download, a build folder) in place instead of /Applications.
pkgbuild --analyze --root "$root" build/pkg-component.plist
plutil -replace 0.BundleIsRelocatable -bool NO build/pkg-component.plist
pkgbuild --root "$root" --component-plist build/pkg-component.plist --identifier "$pkg_id" \
  --version "$version" --install-location / "$components/helpdesk-voice-app.pkg"
sed -e "s/@VERSION@/${version}/" -e "s/@ARCH@/${arch}/" packaging/macos/distribution.xml.in \
  > build/distribution.xml

sign_args=()
if [ -n "${APPLE_DEVELOPER_ID_INSTALLER:-}" ]; then
  sign_args=(--sign "$APPLE_DEVELOPER_ID_INSTALLER" --timestamp)
else
  echo "APPLE_DEVELOPER_ID_INSTALLER not set: the pkg is unsigned"
fi
rm -f "$out"
productbuild --distribution build/distribution.xml --package-path "$components" \
  ${sign_args[@]+"${sign_args[@]}"} "$out"
rm -rf "$root" "$components"

if [ -n "${APPLE_DEVELOPER_ID_INSTALLER:-}" ]; then
  pkgutil --check-signature "$out"
  if [ -n "${APPLE_ID:-}" ] && [ -n "${APPLE_TEAM_ID:-}" ] && [ -n "${APPLE_APP_PASSWORD:-}" ]; then
    echo "notarising $out (this takes minutes)..."
    # --wait returns once Apple has decided, but its exit code does not say what was decided:
    # read the status, and print Apple's log when it is not Accepted.
    result=$(xcrun notarytool submit "$out" --apple-id "$APPLE_ID" --team-id "$APPLE_TEAM_ID" \
      --password "$APPLE_APP_PASSWORD" --wait --output-format json)
    echo "$result"
    status=$(printf '%s' "$result" | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["status"])')
    if [ "$status" != "Accepted" ]; then
      submission=$(printf '%s' "$result" | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
      xcrun notarytool log "$submission" --apple-id "$APPLE_ID" --team-id "$APPLE_TEAM_ID" \
        --password "$APPLE_APP_PASSWORD" || true
      echo "notarisation: $status" >&2
      exit 1
    fi
    # Stapled, the ticket travels with the pkg: it installs on a Mac that is offline.
    xcrun stapler staple "$out"
    xcrun stapler validate "$out"
    spctl --assess --type install --verbose=2 "$out"
  else
    echo "APPLE_ID/APPLE_TEAM_ID/APPLE_APP_PASSWORD not set: the pkg is not notarised"
  fi
fi
echo "built $out ($(du -h "$out" | cut -f1))"
