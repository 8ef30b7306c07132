#!/usr/bin/env bash
# Install the Debian/Ubuntu packages for what is missing, through sudo when not root:
#
#   scripts/apt-need.sh CHECK=PACKAGE ...     e.g.  espeak-ng=espeak-ng  lib:portaudio=libportaudio2
#
# CHECK is a command name (several as a|b: any one will do), lib:NAME for a shared library
# (libNAME.so* known to ldconfig), or - to install PACKAGE unconditionally. Nothing runs
# when nothing is missing. Without apt-get, or as a user without sudo, it names the packages
# to install and fails.
set -euo pipefail

log() { printf 'apt-need: %s\n' "$*" >&2; }

have_lib() { { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null || true; } | grep -q "lib$1\.so"; }

missing=()
for spec in "$@"; do
    [[ -n "$spec" ]] || continue
    check="${spec%%=*}"
    pkg="${spec#*=}"
    case "$check" in
        -) ;;
        lib:*) have_lib "${check#lib:}" && continue ;;
        *)
            IFS='|' read -ra cmds <<<"$check"
            for c in "${cmds[@]}"; do command -v "$c" >/dev/null && continue 2; done
            ;;
    esac
    missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
    log "no apt-get here: install ${missing[*]} (or your system's equivalents) and run make again"
    exit 1
fi
if [[ "$(id -u)" -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    log "not root and no sudo: as root, run  apt-get install ${missing[*]}  and run make again"
    exit 1
fi
log "${sudo[*]:+sudo }apt-get install ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
