#!/usr/bin/env bash
# A headless display for the GUI tests: xvfb-run plus the libraries Qt (PyQt6) needs.
#
# Installs the missing Debian/Ubuntu packages when it can (as root, or with sudo that
# needs no password); otherwise stops with the one command to run. Does nothing when
# everything is there (the CI job installs the same list first, see .ci/run).
# Usage: bash scripts/install-display.sh
set -euo pipefail

PACKAGES=(
  xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  if command -v xvfb-run >/dev/null 2>&1; then
    exit 0  # not Debian/Ubuntu, but a virtual display is there: try with it
  fi
  echo "The GUI tests need xvfb-run (Xvfb) and the Qt xcb libraries. This is not a" >&2
  echo "Debian/Ubuntu system: install them with your package manager, then run again." >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo)
else
  echo "The GUI tests need a virtual display (missing: ${missing[*]}). Install it with:" >&2
  echo "" >&2
  echo "  sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends ${missing[*]}'" >&2
  echo "" >&2
  echo "then run the same command again." >&2
  exit 1
fi

echo "Installing the display packages the GUI tests need: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
${as_root[@]+"${as_root[@]}"} apt-get update -qq
${as_root[@]+"${as_root[@]}"} apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
