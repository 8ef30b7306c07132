#!/usr/bin/env bash
# Install livekit-server (pinned tag) from the Go module proxy as BINDIR/livekit-server.
#
#   scripts/install-livekit.sh [BINDIR]      (default: <repo>/bin, git-ignored)
#
# v1.13.5 is pinned on purpose: later tags carry `replace` directives in go.mod, which
# `go install pkg@version` refuses. Idempotent: does nothing when the binary already reports
# that version. Env: LIVEKIT_VERSION to override the tag, FORCE=1 to rebuild anyway.
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

# Go's own installer puts it in /usr/local/go/bin, which a non-login shell may not have on PATH.
[[ -x /usr/local/go/bin/go ]] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { log "go not found on PATH or in /usr/local/go/bin (needs Go >= 1.22)"; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log "building github.com/livekit/livekit-server/cmd/server@$VERSION (takes minutes on 2 cores)"
start=$SECONDS
# -trimpath and -s -w shrink the binary (~30% smaller) and make the build reproducible;
# the Go build cache (GOCACHE) is kept, so a rebuild of the same tag takes seconds.
GOBIN="$TMP" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install -ldflags="-s -w" "github.com/livekit/livekit-server/cmd/server@$VERSION"
log "built in $((SECONDS - start)) s"

mkdir -p "$BINDIR"
install -m 0755 "$TMP/server" "$TARGET"
log "installed $TARGET ($("$TARGET" --version 2>/dev/null || echo '?'), $(du -h "$TARGET" | cut -f1))"
