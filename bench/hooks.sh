#!/usr/bin/env bash
# Hook and service costs, measured in one run with wrk (same connections for all):
#   1. POST /hooks/bench, a collect hook fanned out to 1, 5 and 10 plugins: requests/s, p50, p99;
#   2. a service call round trip (HTTP → plugin a → supervisor → plugin b → back) against a
#      plain route call to plugin a, and the ratio of their p50s.
# Both for plugins on tokio's multi-threaded runtime and on a single-threaded one (where the
# plugin runtime answers a handler that needs no waiting from its reader, without a task).
# Installs wrk when absent. Settings: DURATION (8s), CONNECTIONS (32), THREADS (2), RUNTIMES
# ("multi_thread current_thread").
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s}
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
  PLUGD_HOST_TOKEN="$host_token" PLUGD_LOG=warn target/release/plugd serve --listen "127.0.0.1:$port" --plugins-dir "$1" \
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
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$work/post.lua" "$1" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec:/ { rps=$2 } /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
    /Non-2xx/ { bad=$NF }
    END { if (bad) { print "non-2xx responses: " bad > "/dev/stderr"; exit 1 } printf "%s %.3f %.3f\n", rps, p50, p99 }'
}

for RUNTIME in $RUNTIMES; do
  echo
  echo "plugins on tokio's $RUNTIME runtime"
  printf '%-40s %12s %10s %10s\n' "wrk -c$CONNECTIONS -d$DURATION" "requests/s" "p50 ms" "p99 ms"
  for n in 1 5 10; do
    dir="$work/fan$n"
    for i in $(seq "$n"); do plugin "h$i" "$dir" "" "bench:collect:0:echo"; done
    start_plugd "$dir"
    read -r rps p50 p99 < <(measure "http://127.0.0.1:$port/hooks/bench")
    stop_plugd
    printf '%-40s %12.0f %10.3f %10.3f\n' "collect hook, $n plugins" "$rps" "$p50" "$p99"
    [ "$n" = 1 ] && one=$p50
  done
  awk -v a="$one" -v b="$p50" 'BEGIN { printf "collect 10 plugins / 1 plugin: p50 ratio %.2f\n", b/a }'

  dir="$work/svc"
  plugin a "$dir" "" ""
  plugin b "$dir" "text.upper:upper" ""
  start_plugd "$dir"
  read -r r_rps r_p50 r_p99 < <(measure "http://127.0.0.1:$port/plugins/a/echo/1")
  read -r s_rps s_p50 s_p99 < <(measure "http://127.0.0.1:$port/plugins/a/call/text.upper")
  stop_plugd
  printf '%-40s %12.0f %10.3f %10.3f\n' "plain route call (a)" "$r_rps" "$r_p50" "$r_p99"
  printf '%-40s %12.0f %10.3f %10.3f\n' "route + service call (a -> b)" "$s_rps" "$s_p50" "$s_p99"
  awk -v a="$r_p50" -v b="$s_p50" -v ra="$r_rps" -v rb="$s_rps" 'BEGIN { printf "service/route: p50 ratio %.2f, throughput ratio %.2f\n", b/a, rb/ra }'
done
