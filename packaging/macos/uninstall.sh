#!/usr/bin/env bash
# Removes Helpdesk Voice from a Mac (run as root: sudo bash uninstall.sh). macOS has no uninstaller
# for packages, so this does what one would: delete the app and make the system forget the package's
# receipt (pkgutil --forget), so a later install is a fresh one. Quit the app (menu bar icon, Quit)
# first; a copy still running keeps running until it quits.
#
# Kept, on purpose: each user's settings, transcripts, tickets and caches
# (~/Library/Application Support/helpdesk-voice, ~/Library/Caches/helpdesk-voice, in users' homes),
# their keychain entries, and the administrator's policy (a configuration profile, or the file in
# /Library/Application Support/helpdesk-voice). A user who wants
# their data gone deletes those folders themselves.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: sudo bash $0" >&2
  exit 1
fi
app="/Applications/Helpdesk Voice.app"
rm -rf "$app"
rm -f /Library/LaunchAgents/com.helpdeskvoice.app.login.plist  # only there if an admin added it
pkgutil --forget com.helpdeskvoice.app.pkg 2>/dev/null || true
echo "Helpdesk Voice removed; users' data in their home folders is kept"
