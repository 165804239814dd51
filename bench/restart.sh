#!/usr/bin/env bash
# Restart benchmark: crash -> first successful request through plugd. Each round SIGKILLs the
# hello example plugin and polls GET /plugins/hello/hello over a keep-alive connection until a
# new process answers 2xx (plugd-bench-restart). Rounds are spaced beyond the plugin's restart
# window, so each crash is restarted at once. Prints p50, p90 and max, and for comparison the
# time to spawn and reap the plugin's program alone. Settings: ROUNDS (50), SPACING_MS (300),
# CGROUPS (true: a cgroup per instance, where the machine allows it; false: rlimits only).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-50}
SPACING_MS=${SPACING_MS:-300}
CGROUPS=${CGROUPS:-true}

. scripts/lib.sh
cargo build --release -q -p plugd -p plugd-bench -p plugd-example-hello

bench_workdir plugd-restart
port=$(free_port)
mkdir -p "$work/plugins/hello"
{
  sed "s|^command = .*|command = \"$PWD/target/release/plugd-example-hello\"|" plugins/hello/plugin.toml
  printf '[restart]\nmax_restarts = 5\nwindow = "100ms"\nstable_after = "100ms"\n'
} >"$work/plugins/hello/plugin.toml"
PLUGD_LOG=warn target/release/plugd serve --listen "127.0.0.1:$port" --plugins-dir "$work/plugins" \
  --data-dir "$work/data" --runtime-dir "$work/run" --cgroups "$CGROUPS" >"$work/plugd.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$port/plugins/hello/hello"

echo "crash -> first 2xx, $ROUNDS rounds ${SPACING_MS} ms apart, cgroups $CGROUPS, $(nproc) cores"
target/release/plugd-bench-restart "http://127.0.0.1:$port" hello /plugins/hello/hello \
  "$ROUNDS" "$SPACING_MS" >"$work/rounds"
quantile() { sort -n "$work/rounds" | awk -v q="$1" '{ v[NR] = $1 } END { i = int((NR - 1) * q + 0.5) + 1; printf "%.2f", v[i] / 1000 }'; }
echo "restart: p50 $(quantile 0.5) ms, p90 $(quantile 0.9) ms, max $(quantile 1) ms"
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
