#!/usr/bin/env bash
# Make the checkout's virtual environment, where `make install` puts voxmesh:
#
#   scripts/make-venv.sh [BASE_PYTHON] [VENV]      (defaults: python3 .venv)
#
# BASE_PYTHON must be Python >= 3.11. Debian and Ubuntu split venv support into
# python3.X-venv: when the venv cannot be made it is installed (scripts/apt-need.sh: through
# sudo when not root) and the venv made again. A failed attempt leaves no half-made venv.
set -euo pipefail

PY="${1:-python3}"
VENV="${2:-.venv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'make-venv: %s\n' "$*" >&2; }

command -v "$PY" >/dev/null || "$HERE/apt-need.sh" "$PY=python3" "-=python3-venv"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "voxmesh needs Python >= 3.11; $PY is $("$PY" --version 2>&1 || echo 'not runnable')."
    log "Use another one: make BASE_PYTHON=python3.12 ... (a venv from it), or PYTHON=/path/to/python (that interpreter, no venv)"
    exit 1
fi
version="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

make_venv() { "$PY" -m venv "$VENV" >/dev/null 2>&1 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

log "creating $VENV with $PY (Python $version)"
if ! make_venv; then
    rm -rf "$VENV"
    "$HERE/apt-need.sh" "-=python$version-venv"
    if ! make_venv; then
        rm -rf "$VENV"
        log "$PY -m venv $VENV failed; its own message:"
        "$PY" -m venv "$VENV" || true
        rm -rf "$VENV"
        exit 1
    fi
fi
