#!/usr/bin/env bash
# Restart benchmark: crash -> first successful request through plugd. Each round SIGKILLs the
# hello example plugin and polls GET /plugins/hello/hello over a keep-alive connection until a
# new process answers 2xx (plugd-bench-restart). Rounds are spaced beyond the plugin's restart
# window, so each crash is restarted at once. Two setups, one after the other: a plain restart
# (a new process, from the start plugd prepared ahead where it uses cgroups) and a warm standby
# (`standby = true`: the second instance takes over). Prints p50, p90 and max of each, and for
# comparison the time to spawn and reap the plugin's program alone. Settings: ROUNDS (50),
# SPACING_MS (300), CGROUPS (true: a cgroup per instance, where the machine allows it; false:
# rlimits only).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-50}
SPACING_MS=${SPACING_MS:-300}
CGROUPS=${CGROUPS:-true}

. scripts/lib.sh
cargo build --release -q -p plugd -p plugd-bench -p plugd-example-hello

bench_workdir plugd-restart
quantile() { sort -n "$1" | awk -v q="$2" '{ v[NR] = $1 } END { i = int((NR - 1) * q + 0.5) + 1; printf "%.2f", v[i] / 1000 }'; }

# measure LABEL STANDBY(true|false)
measure() {
  local dir="$work/$2" port
  port=$(free_port)
  mkdir -p "$dir/plugins/hello"
  {
    sed "s|^command = .*|command = \"$PWD/target/release/plugd-example-hello\"|" plugins/hello/plugin.toml
    printf '[restart]\nmax_restarts = 5\nwindow = "100ms"\nstable_after = "100ms"\nstandby = %s\n' "$2"
  } >"$dir/plugins/hello/plugin.toml"
  PLUGD_LOG=warn target/release/plugd serve --listen "127.0.0.1:$port" --plugins-dir "$dir/plugins" \
    --data-dir "$dir/data" --runtime-dir "$dir/run" --cgroups "$CGROUPS" >"$dir/plugd.log" 2>&1 &
  local plugd=$!
  pids+=("$plugd")
  wait_http "http://127.0.0.1:$port/plugins/hello/hello"
  local mode=()
  [ "$2" = true ] && mode=(standby)
  target/release/plugd-bench-restart "http://127.0.0.1:$port" hello /plugins/hello/hello \
    "$ROUNDS" "$SPACING_MS" "${mode[@]}" >"$dir/rounds"
  kill "$plugd"; wait "$plugd" 2>/dev/null || true
  printf '%-26s p50 %6s ms   p90 %6s ms   max %6s ms\n' "$1" \
    "$(quantile "$dir/rounds" 0.5)" "$(quantile "$dir/rounds" 0.9)" "$(quantile "$dir/rounds" 1)"
}

echo "crash -> first 2xx, $ROUNDS rounds ${SPACING_MS} ms apart, cgroups $CGROUPS, $(nproc) cores"
measure "restart (new process)" false
measure "warm standby takes over" true
# The floor: starting the plugin's program and seeing it exit (it exits at once without plugd).
spawn=$(python3 - "$PWD/target/release/plugd-example-hello" <<'PY'
import subprocess, sys, time
times = []
for _ in range(50):
    t = time.perf_counter()
    subprocess.run([sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times.append(time.perf_counter() - t)
times.sort()
print(f"{times[len(times) // 2] * 1000:.2f}")
PY
)
echo "the plugin's program started and exited on its own: p50 $spawn ms"
