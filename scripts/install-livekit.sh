#!/usr/bin/env bash
# Install livekit-server (pinned tag) from the Go module proxy as BINDIR/livekit-server.
#
#   scripts/install-livekit.sh [BINDIR]      (default: <repo>/bin, git-ignored)
#
# v1.13.5 is pinned on purpose: later tags carry `replace` directives in go.mod, which
# `go install pkg@version` refuses. Idempotent: does nothing when the binary already reports
# that version. Env: LIVEKIT_VERSION to override the tag, FORCE=1 to rebuild anyway, GO=path
# to use that go. Needs Go >= 1.26, or Go >= 1.21, which fetches 1.26 (see below); no Go at
# all: golang-go is installed (scripts/apt-need.sh, through sudo when not root).
set -euo pipefail

VERSION="${LIVEKIT_VERSION:-v1.13.5}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BINDIR="${1:-$REPO_ROOT/bin}"
TARGET="$BINDIR/livekit-server"

log() { printf 'install-livekit: %s\n' "$*"; }

if [[ -x "$TARGET" && "${FORCE:-0}" != 1 ]]; then
    # `livekit-server --version` prints e.g. "livekit-server version 1.13.5".
    have="$("$TARGET" --version 2>/dev/null | awk '{print $NF}' || true)"
    if [[ "v${have#v}" == "$VERSION" ]]; then
        log "$TARGET is already $VERSION; nothing to do"
        exit 0
    fi
    log "$TARGET reports '${have:-unknown}', want $VERSION; rebuilding"
fi

# Go: livekit-server v1.13.5's go.mod says "go 1.26". A Go >= 1.21 older than that fetches
# the 1.26 toolchain itself from the Go module proxy (GOTOOLCHAIN=auto, set below: Debian's
# packages default to "local"); Go <= 1.20 cannot (Debian 12's golang-go is 1.19).
GO_NEEDED="${GO_NEEDED:-1.26}"
GO_MIN=1.21
ver_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

# Go's own installer puts it in /usr/local/go/bin, which a non-login shell may not have on
# PATH; Debian's versioned packages (golang-1.2x-go, e.g. from bookworm-backports) in
# /usr/lib/go-1.2x/bin. The newest found is used; GO=/path/to/go picks one.
find_go() {
    local best="" best_ver="" g v
    for g in ${GO:-"$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go-1.*/bin/go}; do
        [[ -n "$g" && -x "$g" ]] || continue
        v="$("$g" env GOVERSION 2>/dev/null)" || continue
        v="${v#go}"
        if [[ -z "$best_ver" ]] || { ver_ge "$v" "$best_ver" && [[ "$v" != "$best_ver" ]]; }; then
            best="$g" best_ver="$v"
        fi
    done
    [[ -n "$best" ]] && printf '%s\n' "$best"
}
GO="$(find_go || true)"
if [[ -z "$GO" ]]; then
    log "no Go found (PATH, /usr/local/go/bin, /usr/lib/go-1.*/bin); installing golang-go"
    "$REPO_ROOT/scripts/apt-need.sh" "go=golang-go" || {
        log "install Go >= $GO_MIN (>= $GO_NEEDED avoids a toolchain download) and run make livekit again"
        exit 1
    }
    GO="$(find_go || true)"
fi
[[ -n "$GO" ]] || { log "still no Go on PATH after installing golang-go"; exit 1; }
GO_VER="$("$GO" env GOVERSION | sed 's/^go//')"
if ! ver_ge "$GO_VER" "$GO_MIN"; then
    log "$GO is Go $GO_VER; livekit-server $VERSION needs Go >= $GO_NEEDED, or a Go >= $GO_MIN that"
    log "fetches it (Debian 12: apt-get install -t bookworm-backports golang-1.23-go, found in"
    log "/usr/lib/go-1.23/bin; or Go's own release unpacked into /usr/local/go)"
    exit 1
fi
PATH="$(dirname "$GO"):$PATH"
if ! ver_ge "$GO_VER" "$GO_NEEDED"; then
    log "Go $GO_VER < $GO_NEEDED: go fetches the $GO_NEEDED toolchain from the module proxy first"
    export GOTOOLCHAIN=auto
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log "building github.com/livekit/livekit-server/cmd/server@$VERSION with Go $GO_VER (takes minutes on 2 cores; ~1 GB of Go caches)"
start=$SECONDS
# -trimpath and -s -w shrink the binary (~30% smaller) and make the build reproducible;
# the Go build cache (GOCACHE) is kept, so a rebuild of the same tag takes seconds.
GOBIN="$TMP" GOFLAGS="${GOFLAGS:-} -trimpath" \
    "$GO" install -ldflags="-s -w" "github.com/livekit/livekit-server/cmd/server@$VERSION"
log "built in $((SECONDS - start)) s"

mkdir -p "$BINDIR"
install -m 0755 "$TMP/server" "$TARGET"
log "installed $TARGET ($("$TARGET" --version 2>/dev/null || echo '?'), $(du -h "$TARGET" | cut -f1))"
