#!/usr/bin/env bash
# Install everything archsae needs on a fresh Debian machine of this kind (run as root):
# the demo's Debian package, Chromium and its driver (browser tests), the collage sprites (npm), then a virtual environment in .venv with archsae and its test tools.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/tuxpaint/stamps ]; then
  # The demo set's photo stamps (GPL-2): used from the installed files, never committed.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default >/dev/null
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  # The browser tests drive Debian's Chromium through its matching chromedriver (Selenium).
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

SPRITES="$HOME/.cache/archsae/sprites"
if [ ! -d "$SPRITES/node_modules/@lobehub/fluent-emoji-3d/assets" ]; then
  # The identifiability benchmark's object sprites (Fluent 3D emoji, MIT; 25 MB from npm), never committed.
  if ! command -v npm >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  npm install --silent --no-audit --no-fund --prefix "$SPRITES" @lobehub/fluent-emoji-3d@1.1.0 >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# One pip command: torch pinned to the CPU wheel on disk, torchvision 0.28.0 beside timm (otherwise pip
# pulls a newer CUDA torch), then archsae itself in editable mode with its test extra.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 torchvision==0.28.0 timm -e ".[test]"
