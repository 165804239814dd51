#!/usr/bin/env bash
# Cost of supervision and limits, measured in one run:
#   1. the time plugd takes from its start to every one of N idle plugins ready (default 200),
#      then plugd's own CPU and memory while it supervises them, with health pings and resource
#      monitoring at their defaults, per plugin; and the memory of the start stubs it keeps
#      (one per plugin where it uses cgroups);
#   2. GET /plugins/hello/hello through plugd with limits and monitoring on (a cgroup per
#      plugin, samples every 2 s) against the same with them off; prints the ratio.
# Installs wrk when absent. Settings: PLUGINS (200), IDLE_SECONDS (20), DURATION (10s),
# CONNECTIONS (64), THREADS (2), PLUGD_BIN (the plugd to measure, by default this checkout's
# release build).
set -euo pipefail
cd "$(dirname "$0")/.."

PLUGINS=${PLUGINS:-200}
IDLE_SECONDS=${IDLE_SECONDS:-20}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}

. scripts/lib.sh
command -v wrk >/dev/null || install_packages wrk
cargo build --release -q -p plugd -p plugd-example-hello -p plugd-testkit

work=$(mktemp -d /tmp/plugd-limits.XXXXXX)
trap 'stop_plugd; rm -rf "$work"' EXIT

hello="$PWD/target/release/plugd-example-hello"
# Idle plugins: the test echo plugin, which takes its name from its manifest.
echo_bin="$PWD/target/release/plugd-testkit-echo"

# Starts plugd on $1 (plugins dir) with extra flags; waits until /readyz says ready.
start_plugd() {
  local dir=$1; shift
  port=$(free_port)
  PLUGD_LOG=warn "${PLUGD_BIN:-target/release/plugd}" serve --listen "127.0.0.1:$port" --plugins-dir "$dir" \
    --data-dir "$work/data" --runtime-dir "$work/run" "$@" >"$work/plugd.out" 2>"$work/plugd.err" &
  plugd_pid=$!
  for _ in $(seq 3000); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "plugd did not become ready" >&2; cat "$work/plugd.err" >&2; return 1
}

# CPU seconds (user + system) used so far by process $1.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# 1. Idle supervision.
mkdir -p "$work/idle"
for i in $(seq "$PLUGINS"); do
  mkdir -p "$work/idle/p$i"
  printf 'name = "p%s"\nversion = "1"\ncommand = "%s"\n' "$i" "$echo_bin" >"$work/idle/p$i/plugin.toml"
done
s0=$(date +%s.%N)
start_plugd "$work/idle"
s1=$(date +%s.%N)
sleep 3   # let start-up work finish before measuring the steady state
c0=$(cpu_seconds "$plugd_pid"); t0=$(date +%s.%N)
sleep "$IDLE_SECONDS"
c1=$(cpu_seconds "$plugd_pid"); t1=$(date +%s.%N)
rss=$(rss_kib "$plugd_pid")
# The start stubs: plugd's children that are not plugins (their proportional share of memory).
stubs=0; stub_pss=0
for child in $(cat /proc/"$plugd_pid"/task/*/children 2>/dev/null); do
  if grep -q plugd-start-stub "/proc/$child/cmdline" 2>/dev/null; then
    stubs=$((stubs + 1))
    stub_pss=$((stub_pss + $(awk '/^Pss:/ { print $2 }' "/proc/$child/smaps_rollup" 2>/dev/null || echo 0)))
  fi
done
ready=$(curl -s "http://127.0.0.1:$port/readyz" | grep -o '"state":"ready"' | wc -l || true)
stop_plugd
# plugd alone, for the per-plugin figures.
mkdir -p "$work/none"
start_plugd "$work/none"
sleep 3
base_rss=$(rss_kib "$plugd_pid")
stop_plugd
awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v rss="$rss" -v base="$base_rss" -v n="$PLUGINS" \
    -v ready="$ready" -v s0="$s0" -v s1="$s1" -v stubs="$stubs" -v stub_pss="$stub_pss" 'BEGIN {
  printf "start-up: %d plugins ready %.2f s after plugd started\n", ready, s1 - s0
  printf "idle: %d plugins (%d ready) for %.1f s: plugd used %.3f%% of one core (%.4f%% per plugin)\n",
    n, ready, t1 - t0, 100 * (c1 - c0) / (t1 - t0), 100 * (c1 - c0) / (t1 - t0) / n
  printf "plugd RSS %.1f MiB, %.1f MiB with no plugin: %.0f KiB per plugin\n", rss / 1024, base / 1024, (rss - base) / n
  if (stubs > 0) printf "start stubs: %d, %.0f KiB each (proportional set size)\n", stubs, stub_pss / stubs }'

# 2. Per-request overhead of limits and monitoring.
mkdir -p "$work/one/hello"
sed "s|^command = .*|command = \"$hello\"|" plugins/hello/plugin.toml >"$work/one/hello/plugin.toml"
measure() {
  local url="http://127.0.0.1:$port/plugins/hello/hello"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec:/ { rps=$2 } /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
    END { printf "%s %.3f %.3f\n", rps, p50, p99 }'
}
start_plugd "$work/one" --cgroups false --monitor-interval 0s
read -r off_rps off_p50 off_p99 < <(measure); stop_plugd
start_plugd "$work/one"
read -r on_rps on_p50 on_p99 < <(measure); stop_plugd

printf '%-36s %12s %10s %10s\n' "GET /plugins/hello/hello" "requests/s" "p50 ms" "p99 ms"
printf '%-36s %12.0f %10.3f %10.3f\n' "limits and monitoring off" "$off_rps" "$off_p50" "$off_p99"
printf '%-36s %12.0f %10.3f %10.3f\n' "limits and monitoring on" "$on_rps" "$on_p50" "$on_p99"
awk -v a="$off_rps" -v b="$on_rps" 'BEGIN { printf "ratio on/off = %.2f\n", b/a }'
