#!/usr/bin/env bash
# Prove the GPU path of the TTS actors on a machine with NVIDIA GPUs, in a few minutes:
#
#   scripts/gpu-check.sh     (env: PYTHON, default python3; XTTS_DIR; KEEP=1 keeps the work dir)
#
# 1. the GPUs (nvidia-smi) and an onnxruntime with CUDAExecutionProvider (the `gpu` extra);
# 2. per GPU, Piper called directly: provider, load + level calibration, first audio, RTF
#    (and XTTS on the first GPU when XTTS_DIR names a checkpoint: it is experimental);
# 3. `voxmesh up` (piper, tts.devices = "auto", a free port): every TTS actor is pinned to
#    its own GPU (CUDA_VISIBLE_DEVICES) and runs Piper on CUDAExecutionProvider;
# 4. first audio through the mesh (`voxmesh say`), and a voice loaded while a reply plays
#    (`voxmesh models load`): the reply must finish and the load succeed.
# Prints a summary; exit 0 when every check passed, 1 when one failed, 2 when it cannot run.
set -uo pipefail

PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d -t voxmesh-gpu-check.XXXXXX)"
UP_PID=""
FAILED=0
SUMMARY=()

log() { printf 'gpu-check: %s\n' "$*"; }
pass() { SUMMARY+=("PASS  $*"); log "PASS $*"; }
fail() { SUMMARY+=("FAIL  $*"); log "FAIL $*"; FAILED=1; }
vox() { timeout "${VOX_TIMEOUT:-60}" "$PYTHON" -m voxmesh "$@" --port "$PORT"; }

# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
    if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
        kill -INT "$UP_PID" 2>/dev/null  # as Ctrl-C: the supervisor stops every actor
        for _ in $(seq 50); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$UP_PID" 2>/dev/null
        wait "$UP_PID" 2>/dev/null
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

summary() {
    printf '\n== gpu-check summary ==\n'
    printf '%s\n' "${SUMMARY[@]}"
    if [[ "$FAILED" == 0 ]]; then printf 'all checks passed\n'; else printf 'FAILED\n'; fi
}

cd "$REPO_ROOT" || exit 2

# --- 1. GPUs and onnxruntime -----------------------------------------------------------------
command -v nvidia-smi >/dev/null || { log "nvidia-smi not found: no NVIDIA GPU here"; exit 2; }
mapfile -t GPUS < <(nvidia-smi -L | awk '/^GPU /{print n++}')  # as supervisor/topology.py
[[ ${#GPUS[@]} -gt 0 ]] || { log "nvidia-smi lists no GPU"; exit 2; }
pass "GPUs: ${#GPUS[@]} ($(nvidia-smi --query-gpu=name --format=csv,noheader | sort -u | paste -sd, -))"

providers="$("$PYTHON" -c 'import onnxruntime as o; print(o.__version__, *o.get_available_providers())')"
if [[ "$providers" != *CUDAExecutionProvider* ]]; then
    fail "onnxruntime $providers: no CUDAExecutionProvider. onnxruntime (CPU) and onnxruntime-gpu share one module; make the GPU one win: pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'"
    summary
    exit 1
fi
pass "onnxruntime $providers"

# --- 2. Piper on each GPU, called directly ------------------------------------------------
# One process per GPU, pinned as the supervisor pins a TTS actor, plus the CPU for reference.
for device in "${GPUS[@]}" cpu; do
    visible="$device"; [[ "$device" == cpu ]] && visible=""
    if ! line="$(CUDA_VISIBLE_DEVICES="$visible" timeout 120 "$PYTHON" - "$device" <<'PY' 2>"$WORK/direct-$device.err"
import logging, statistics, sys, time
from voxmesh.actors.tts import adapters
logging.basicConfig(level=logging.INFO)  # the "piper ... on PROVIDER: why" line, on stderr
device = sys.argv[1]
t0 = time.monotonic()
voice = adapters.engine("piper", device=device).load("joe")
load_s = time.monotonic() - t0
text = "Hello there! The next train to the airport leaves at ten past four, from platform two."
firsts, rtfs = [], []
for _ in range(5):
    t = time.monotonic()
    pieces = voice.synthesize(text, first=True)
    first = next(pieces)
    firsts.append((time.monotonic() - t) * 1000)
    samples = first.size + sum(p.size for p in pieces)
    rtfs.append((time.monotonic() - t) / (samples / 48000))
print(f"{voice.provider} load {load_s:.2f}s (calibration {voice.calibration_s:.2f}s, "
      f"gain {voice.gain_db:+.1f} dB) first audio {statistics.median(firsts):.0f} ms "
      f"RTF {statistics.median(rtfs):.3f}")
PY
)"; then
        fail "piper direct on $device: $(tail -3 "$WORK/direct-$device.err" | tr '\n' ' ')"
    elif [[ "$device" != cpu && "$line" != CUDAExecutionProvider* ]]; then
        fail "piper direct on GPU $device: $line ($(grep -m1 'piper ' "$WORK/direct-$device.err"))"
    else
        pass "piper direct on $device: $line"
    fi
done

# XTTS (experimental) only when told where a checkpoint is: nothing is downloaded.
if [[ -z "${XTTS_DIR:-}" ]]; then
    log "xtts not checked: set XTTS_DIR to an XTTS-v2 checkpoint dir (pip install 'voxmesh[xtts]')"
elif ! line="$(CUDA_VISIBLE_DEVICES="${GPUS[0]}" timeout 300 "$PYTHON" - "${GPUS[0]}" "$XTTS_DIR" <<'PY' 2>"$WORK/xtts.err"
import logging, sys, time
from voxmesh.actors.tts import adapters
logging.basicConfig(level=logging.INFO)
device, checkpoint = sys.argv[1:]
t0 = time.monotonic()
voice = adapters.engine("xtts", voice=checkpoint, device=device).load(checkpoint)
load_s = time.monotonic() - t0
t = time.monotonic()
pieces = voice.synthesize("Hello there! The next train leaves at ten past four.", first=True)
first = next(pieces)
first_ms = (time.monotonic() - t) * 1000
samples = first.size + sum(p.size for p in pieces)
rtf = (time.monotonic() - t) / (samples / 48000)
print(f"{voice.provider} load {load_s:.1f}s first audio {first_ms:.0f} ms RTF {rtf:.2f}")
PY
)"; then
    fail "xtts on GPU ${GPUS[0]}: $(tail -3 "$WORK/xtts.err" | tr '\n' ' ')"
elif [[ "$line" != torch-cuda* ]]; then
    fail "xtts on GPU ${GPUS[0]}: $line ($(grep -m1 'xtts ' "$WORK/xtts.err"))"
else
    pass "xtts on GPU ${GPUS[0]}: $line"
fi

# --- 3. the mesh --------------------------------------------------------------------------
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$WORK/mesh.toml" <<EOF
[server]
port = $PORT
[tts]
engine = "piper"
devices = "auto"
EOF
VOXMESH_LOG_LEVEL=INFO "$PYTHON" -m voxmesh up --config "$WORK/mesh.toml" >"$WORK/up.log" 2>&1 &
UP_PID=$!
ready=0
for _ in $(seq 180); do  # up to 90 s: every actor loads its models before READY
    kill -0 "$UP_PID" 2>/dev/null || break
    if "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
        ready=1; break
    fi
    sleep 0.5
done
if [[ "$ready" != 1 ]]; then
    fail "voxmesh up did not become healthy on :$PORT; its log ends:"
    tail -20 "$WORK/up.log"
    summary
    exit 1
fi
pass "voxmesh up healthy on :$PORT"

vox status --json >"$WORK/status.json" || fail "voxmesh status --json"
if check="$("$PYTHON" - "$WORK/status.json" "${GPUS[@]}" <<'PY'
import json, sys
actors = [a for a in json.load(open(sys.argv[1]))["actors"] if a["kind"] == "tts"]
gpus, problems = sys.argv[2:], []
pinned = sorted(a.get("gpu", "") for a in actors)
if pinned != sorted(gpus):
    problems.append(f"TTS actors pinned to {pinned}, GPUs are {sorted(gpus)}")
for a in actors:
    info = a.get("info", {})
    row = f"{a['name']} CUDA_VISIBLE_DEVICES={a.get('gpu', '')} device={info.get('device')} provider={info.get('provider')}"
    print(row)
    if info.get("provider") != "CUDAExecutionProvider" or info.get("device") != a.get("gpu"):
        problems.append(row)
if problems:
    sys.exit("; ".join(problems))
PY
)"; then
    pass "TTS actors, one per GPU, each on CUDA: $(echo "$check" | paste -sd';' -)"
else
    fail "TTS actors: $check"
fi

# --- 4. speech through the mesh, and a voice loaded under load -----------------------------
firsts=()
for i in 1 2 3; do
    if out="$(vox say "Hello there, how can I help you today?" -o "$WORK/say$i.wav")"; then
        firsts+=("$(sed -n 's/.*first audio after \([0-9]*\) ms.*/\1/p' <<<"$out")")
    else
        fail "voxmesh say #$i: $out"
    fi
done
[[ ${#firsts[@]} -gt 0 ]] && pass "first audio through the mesh: ${firsts[*]} ms"

# The joe voice again under another name (its .onnx path): a real second load, with its
# own session and calibration, while a long reply is being spoken.
joe="$("$PYTHON" -c 'from voxmesh.speech.assets import piper_voice_paths; print(piper_voice_paths()[0])')"
long="This reply is long on purpose, so that a second voice is loaded while it plays. "
long+="It goes on for several sentences. Every frame must still arrive on time. "
long+="And it must end as it should, with the whole text spoken."
vox say "$long" -o "$WORK/long.wav" >"$WORK/long.out" 2>&1 &
say_pid=$!
sleep 0.3
t0=$(date +%s%N)
if VOX_TIMEOUT=150 vox models load "piper:$joe" --json >"$WORK/load.json" 2>&1; then
    pass "voxmesh models load piper:$(basename "$joe") during a reply: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
else
    fail "voxmesh models load during a reply: $(cat "$WORK/load.json")"
fi
if wait "$say_pid"; then
    pass "the reply spoken during the load finished: $(cat "$WORK/long.out")"
else
    fail "the reply spoken during the load: $(cat "$WORK/long.out")"
fi
vox models list --json >"$WORK/models.json" 2>&1 && log "models: $(tr -d ' \n' <"$WORK/models.json")"

grep -h "piper .* on \|calibrated in" "$WORK/up.log" | sed 's/^/  log: /' | head -20
summary
exit "$FAILED"
