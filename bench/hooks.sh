#!/usr/bin/env bash
# Hook and service costs, measured in one run with wrk (same connections for all):
#   1. POST /hooks/bench, a collect hook fanned out to 1, 5 and 10 plugins: requests/s, p50, p99;
#   2. a service call round trip (HTTP → plugin a → supervisor → plugin b → back) against a
#      plain route call to plugin a, and the ratio of their p50s.
# Both for plugins on tokio's multi-threaded runtime and on a single-threaded one (where the
# plugin runtime answers a handler that needs no waiting from its reader, without a task).
# The measurements run in interleaved rounds (1, 5, 10 plugins, route, service, 1, 5, …) against
# one plugd, so a burst of other load on the machine falls on each alike; medians are printed.
# Installs wrk when absent. Settings: DURATION (5s), ROUNDS (3), CONNECTIONS (32), THREADS (2),
# RUNTIMES ("multi_thread current_thread"), PLUGD_BIN (the plugd to measure, by default this
# checkout's release build: set it to compare builds in the same period).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
RUNTIMES=${RUNTIMES:-multi_thread current_thread}

. scripts/lib.sh
command -v wrk >/dev/null || install_packages wrk
cargo build --release -q -p plugd -p plugd-testkit

work=$(mktemp -d /tmp/plugd-hooks.XXXXXX)
trap 'stop_plugd; rm -rf "$work"' EXIT
echo_bin="$PWD/target/release/plugd-testkit-echo"

# Firing hooks needs a token with the host (or admin) role.
host_token="bench-host-token-$RANDOM$RANDOM"

start_plugd() {
  port=$(free_port)
  PLUGD_HOST_TOKEN="$host_token" PLUGD_LOG=warn "${PLUGD_BIN:-target/release/plugd}" serve --listen "127.0.0.1:$port" --plugins-dir "$1" \
    --data-dir "$work/data" --runtime-dir "$work/run" >"$work/out" 2>"$work/err" &
  plugd_pid=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$work/err" >&2; return 1
}

# plugin NAME DIR SERVICES HOOKS
plugin() {
  mkdir -p "$2/$1"
  printf 'name = "%s"\nversion = "1"\ncommand = "%s"\n[env]\nECHO_SERVICES = "%s"\nECHO_HOOKS = "%s"\nECHO_RUNTIME = "%s"\n' \
    "$1" "$echo_bin" "$3" "$4" "$RUNTIME" >"$2/$1/plugin.toml"
}

cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '"payload"'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $host_token"
LUA

measure() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d1s -s "$work/post.lua" "$1" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec:/ { rps=$2 } /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
    /Non-2xx/ { bad=$NF }
    END { if (bad) { print "non-2xx responses: " bad > "/dev/stderr"; exit 1 } printf "%s %.3f %.3f\n", rps, p50, p99 }'
}

# A table of one runtime's rounds ("round what rps p50 p99" lines): each round, then the medians
# and the ratios of the medians (and the medians of the per-round ratios).
summarize() {
  python3 - "$1" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
labels = {
    "one": "collect hook, 1 plugin", "five": "collect hook, 5 plugins",
    "ten": "collect hook, 10 plugins", "route": "plain route call (a)",
    "service": "route + service call (a -> b)",
}
for r, what, rps, p50, p99 in rows:
    print(f"{r:<6} {labels[what]:<34} {float(rps):12.0f} {float(p50):10.3f} {float(p99):10.3f}")
med = {}
print(f"medians over {len({r[0] for r in rows})} rounds:")
for what, label in labels.items():
    got = [list(map(float, r[2:])) for r in rows if r[1] == what]
    med[what] = [statistics.median(col) for col in zip(*got)]
    rps, p50, p99 = med[what]
    print(f"{'':<6} {label:<34} {rps:12.0f} {p50:10.3f} {p99:10.3f}")
def per_round(a, b):
    by = {(r[0], r[1]): float(r[3]) for r in rows}
    return statistics.median(by[(k, b)] / by[(k, a)] for k in {r[0] for r in rows})
print(f"collect 10 plugins / 1 plugin: p50 ratio {med['ten'][1] / med['one'][1]:.2f} "
      f"(median of per-round ratios {per_round('one', 'ten'):.2f})")
print(f"service/route: p50 ratio {med['service'][1] / med['route'][1]:.2f} "
      f"(median of per-round ratios {per_round('route', 'service'):.2f}), "
      f"throughput ratio {med['service'][0] / med['route'][0]:.2f}")
PY
}

# One plugd per runtime serves every measurement: hook `one` has one handler, `five` five and
# `ten` ten (h1 handles all three), and plugin a calls plugin b's service.
for RUNTIME in $RUNTIMES; do
  echo
  echo "plugins on tokio's $RUNTIME runtime (wrk -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds)"
  printf '%-6s %-34s %12s %10s %10s\n' "round" "" "requests/s" "p50 ms" "p99 ms"
  dir="$work/$RUNTIME"
  for i in $(seq 10); do
    hooks="ten:collect:0:echo"
    [ "$i" -le 5 ] && hooks="five:collect:0:echo;$hooks"
    [ "$i" = 1 ] && hooks="one:collect:0:echo;$hooks"
    plugin "h$i" "$dir" "" "$hooks"
  done
  plugin a "$dir" "" ""
  plugin b "$dir" "text.upper:upper" ""
  start_plugd "$dir"
  : >"$work/rounds"
  for round in $(seq "$ROUNDS"); do
    for what in one five ten route service; do
      case $what in
        route) url=/plugins/a/echo/1 ;;
        service) url=/plugins/a/call/text.upper ;;
        *) url=/hooks/$what ;;
      esac
      read -r rps p50 p99 < <(measure "http://127.0.0.1:$port$url")
      echo "$round $what $rps $p50 $p99" >>"$work/rounds"
    done
  done
  stop_plugd
  summarize "$work/rounds"
done
