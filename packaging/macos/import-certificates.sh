#!/usr/bin/env bash
# Puts the Developer ID certificates into a keychain of their own on a CI runner, where codesign,
# pkgbuild and productbuild find them without a password prompt. Run before build-pkg.sh:
#   APPLE_CERTIFICATES_P12_BASE64  both Developer ID certificates (Application and Installer) with
#                                  their private keys, exported from Keychain Access as one .p12,
#                                  base64
#   APPLE_CERTIFICATES_P12_PASSWORD  the .p12's password
# Does nothing when they are not set (an unsigned build). A hosted runner is thrown away with the
# keychain in it; on a self-hosted one, delete it after the build:
#   security delete-keychain "$RUNNER_TEMP/helpdesk-voice-signing.keychain-db"
set -euo pipefail

if [ -z "${APPLE_CERTIFICATES_P12_BASE64:-}" ] || [ -z "${APPLE_CERTIFICATES_P12_PASSWORD:-}" ]; then
  echo "APPLE_CERTIFICATES_P12_BASE64/APPLE_CERTIFICATES_P12_PASSWORD not set: no certificates imported"
  exit 0
fi
work=${RUNNER_TEMP:-${TMPDIR:-/tmp}}
keychain="$work/helpdesk-voice-signing.keychain-db"
p12="$work/helpdesk-voice-signing.p12"
# A random password: the keychain only has to stay unlocked for this job.
keychain_password=$(openssl rand -base64 24)
trap 'rm -f "$p12"' EXIT

printf '%s' "$APPLE_CERTIFICATES_P12_BASE64" | base64 --decode > "$p12"
security create-keychain -p "$keychain_password" "$keychain"
# No auto-lock during a long build (-t 21600: six hours), no lock on sleep (no -l).
security set-keychain-settings -t 21600 "$keychain"
security unlock-keychain -p "$keychain_password" "$keychain"
security import "$p12" -k "$keychain" -P "$APPLE_CERTIFICATES_P12_PASSWORD" -f pkcs12 \
  -T /usr/bin/codesign -T /usr/bin/productbuild -T /usr/bin/pkgbuild -T /usr/bin/productsign
# Lets Apple's signing tools use the keys without the "allow access" dialog nobody can click here.
security set-key-partition-list -S apple-tool:,apple:,codesign: -s -k "$keychain_password" "$keychain" >/dev/null
# Searched first, then the runner's own keychains (for Apple's intermediate certificates).
existing=$(security list-keychains -d user | sed -e 's/^ *"//' -e 's/"$//')
# shellcheck disable=SC2086 # one path per line, none with spaces on a runner
security list-keychains -d user -s "$keychain" $existing
security find-identity -v -p codesigning "$keychain"
echo "certificates imported into $keychain"
