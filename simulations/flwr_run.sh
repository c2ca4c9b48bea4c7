#!/usr/bin/env bash
# Run fedlottery's ServerApp + ClientApp with `flwr run .` in Flower's simulation runtime, offline.
#
#   simulations/flwr_run.sh                                     # configs/default.yaml -> runs/flwr
#   simulations/flwr_run.sh --run-config 'num-rounds=2 out-dir="/tmp/flwr_smoke"'
#   simulations/flwr_run.sh --run-config 'config="configs/imp_digits.yaml"'
#
# Extra arguments go to `flwr run` unchanged (string values need TOML quotes, as above).
# What it does:
#   1. sets FLWR_HOME (default: <project>/.flwr, excluded from the FAB by Flower), disables telemetry,
#      the update check and runtime dependency installation (no network: use the current venv); sets for
#      Flower's simulation process (it inherits them through the SuperLink daemon this script starts)
#      RAY_ADDRESS=local unless set (Flower's backend calls a bare `ray.init()`, which would otherwise join
#      the Ray cluster started last on this machine), RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 and
#      RAY_DEDUP_LOGS_SKIP_REGEX as `fedlottery run` does (no foreign warnings; fedlottery/runtime/simulation.py);
#   2. makes sure $FLWR_HOME/config.toml has a SuperLink connection `$FLWR_CONNECTION`
#      (default "fedlottery-sim", address ":local:" = a local SuperLink the CLI starts on demand);
#   3. runs `flwr run . $FLWR_CONNECTION --federation-config 'num-supernodes=20
#      client-resources-num-cpus=1' --stream` FROM THE PROJECT ROOT, so the SuperLink daemon (and
#      therefore the ServerApp, which inherits its working directory) resolves `configs/...` and
#      `runs/...` against the project root;
#   4. polls `flwr list --run-id N --format json` until the run is finished and exits 1 unless its
#      status is `finished:completed`;
#   5. stops the SuperLink daemon it started (also on error / Ctrl-C, after `flwr stop`-ing the run).
#
# Environment knobs: FLWR_HOME, FLWR_CONNECTION, NUM_SUPERNODES (20 = partition.num_clients of the
# config), CLIENT_CPUS (1), CLIENT_GPUS (0), FLWR_LOCAL_SUPERLINK_HTTP_API_PORT (39091; change it if another SuperLink
# already listens there) and FLWR_LOCAL_CONTROL_API_PORT (39093, Flower's), FLWR_KEEP_SUPERLINK=1 (leave
# the daemon running).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${VIRTUAL_ENV:-}" && -f "$ROOT/.venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    . "$ROOT/.venv/bin/activate"
fi

export FLWR_HOME="${FLWR_HOME:-$ROOT/.flwr}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT="${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-39091}"
export RAY_ADDRESS="${RAY_ADDRESS:-local}"
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="${RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO:-0}"
export RAY_DEDUP_LOGS_SKIP_REGEX="${RAY_DEDUP_LOGS_SKIP_REGEX:-Manually terminating ClientAppActor}"
CONNECTION="${FLWR_CONNECTION:-fedlottery-sim}"
NUM_SUPERNODES="${NUM_SUPERNODES:-20}"
CLIENT_CPUS="${CLIENT_CPUS:-1}"
CLIENT_GPUS="${CLIENT_GPUS:-0}"
PORT="$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"
LINK_LOG="$FLWR_HOME/local-superlink/superlink.log"

log() { printf '[flwr_run] %s\n' "$*" >&2; }

# ---- Flower config: a local-simulation SuperLink connection ---------------------------------------
mkdir -p "$FLWR_HOME"
CONFIG_TOML="$FLWR_HOME/config.toml"
if [[ ! -f "$CONFIG_TOML" ]]; then
    # Flower's own default (so `local` / `supergrid` keep working), written before Flower does it.
    cat > "$CONFIG_TOML" <<'EOF'
[superlink]
default = "local"

[superlink.supergrid]
address = "api.flower.ai"

[superlink.local]
address = ":local:"
EOF
fi
if ! grep -qE "^\[superlink\.\"?${CONNECTION}\"?\]|^${CONNECTION}\.address *=" "$CONFIG_TOML"; then
    printf '\n[superlink.%s]\naddress = ":local:"\n' "$CONNECTION" >> "$CONFIG_TOML"
    log "added SuperLink connection '$CONNECTION' to $CONFIG_TOML"
fi

# ---- the local SuperLink daemon: find / stop ours only --------------------------------------------
# Ours = a flower-superlink whose --log-file is under this FLWR_HOME (that path is in its command line).
numeric_pids() { local p; for p in /proc/[0-9]*; do echo "${p#/proc/}"; done; }
cmdline() { tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline"; }
superlink_pids() {
    local pid cmd
    for pid in $(numeric_pids); do
        cmd="$(cmdline "$pid")" || continue
        [[ "$cmd" == *flower-superlink* && "$cmd" == *"$LINK_LOG"* ]] && echo "$pid"
    done
    return 0
}
# The SuperLink and the SuperExec it spawns each lead their own session; the simulation process and
# the Ray processes it starts live in the SuperExec's session. Those session ids are what we clean up.
daemon_sids() {
    local link pid cmd
    for link in "$@"; do
        echo "$link"
        for pid in $(numeric_pids); do
            cmd="$(cmdline "$pid")" || continue
            [[ "$cmd" == *flower-superexec* && "$cmd" == *"--parent-pid $link "* ]] && echo "$pid"
        done
    done
    return 0
}
session_pids() {  # live (non-zombie) processes in the given sessions, never this script
    ps -eo pid=,sid=,stat= | awk -v sids=" $* " -v me="$$" \
        'index(sids, " " $2 " ") && $1 != me && $3 !~ /^Z/ {print $1}'
}
port_in_use() { python - "$PORT" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}
stop_superlink() {
    local links sids pid i
    links="$(superlink_pids)"
    [[ -z "$links" ]] && return 0
    sids="$(daemon_sids $links | tr '\n' ' ')"
    log "stopping SuperLink daemon (pid $(echo $links))"
    for pid in $links; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 1 60); do   # it stops its SuperExec and the simulation (which shuts Ray down)
        [[ -z "$(session_pids $sids)" ]] && return 0
        sleep 0.5
    done
    for pid in $(session_pids $sids); do   # leftovers (e.g. Ray agents of an interrupted run)
        log "still running after SuperLink stop: $pid $(cmdline "$pid" | cut -c1-60): SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 3
    for pid in $(session_pids $sids); do kill -KILL "$pid" 2>/dev/null || true; done
    return 0
}

if [[ -n "$(superlink_pids)" ]]; then
    # A daemon left over from an earlier run (its working directory may not be this project root).
    log "a SuperLink of this FLWR_HOME is already running: restarting it from $ROOT"
    stop_superlink
fi
if port_in_use; then
    log "port $PORT is taken by another process (another user's SuperLink?); it would receive this run."
    log "Set FLWR_LOCAL_SUPERLINK_HTTP_API_PORT to a free port and retry."
    exit 2
fi

RUN_ID=""
OUT_LOG="$(mktemp "${TMPDIR:-/tmp}/flwr_run.XXXXXX")"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -z "$RUN_ID" && -f "$OUT_LOG" ]]; then   # interrupted while streaming
        RUN_ID="$(sed -n 's/.*Successfully started run \([0-9][0-9]*\).*/\1/p' "$OUT_LOG" | tail -n 1)"
    fi
    if [[ -n "$RUN_ID" && "${RUN_FINISHED:-0}" != 1 ]]; then
        log "stopping run $RUN_ID"
        timeout 60 flwr stop "$RUN_ID" "$CONNECTION" >/dev/null 2>&1 || true
    fi
    if [[ "${FLWR_KEEP_SUPERLINK:-0}" != 1 ]]; then stop_superlink; fi
    rm -f "$OUT_LOG"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- run ------------------------------------------------------------------------------------------
log "FLWR_HOME=$FLWR_HOME  connection=$CONNECTION  supernodes=$NUM_SUPERNODES  cpus/client=$CLIENT_CPUS  gpus/client=$CLIENT_GPUS"
START=$(date +%s)
set +e
flwr run . "$CONNECTION" \
    --federation-config "num-supernodes=$NUM_SUPERNODES client-resources-num-cpus=$CLIENT_CPUS client-resources-num-gpus=$CLIENT_GPUS" \
    --stream "$@" 2>&1 | tee "$OUT_LOG"
FLWR_RC=${PIPESTATUS[0]}
set -e
RUN_ID="$(sed -n 's/.*Successfully started run \([0-9][0-9]*\).*/\1/p' "$OUT_LOG" | tail -n 1)"
if [[ -z "$RUN_ID" ]]; then
    log "flwr run did not start a run (exit $FLWR_RC); SuperLink log: $LINK_LOG"
    exit 1
fi

# ---- final status: `flwr run` exits 0 even when the ServerApp fails ------------------------------
STATUS=""
for _ in $(seq 1 120); do
    STATUS="$(flwr list "$CONNECTION" --run-id "$RUN_ID" --format json 2>/dev/null | python -c '
import json, sys
try:
    runs = json.load(sys.stdin).get("runs", [])
except ValueError:
    runs = []
print(runs[0]["status"] + ("" if not runs[0].get("status-details") else " (" + runs[0]["status-details"] + ")") if runs else "")
' || true)"
    [[ "$STATUS" == finished* ]] && break
    sleep 1
done
RUN_FINISHED=0; [[ "$STATUS" == finished* ]] && RUN_FINISHED=1
log "run $RUN_ID: ${STATUS:-unknown status} after $(( $(date +%s) - START ))s"
if [[ "$STATUS" != finished:completed* ]]; then
    log "run $RUN_ID did not complete: see the streamed log above and $LINK_LOG"
    exit 1
fi
exit 0
