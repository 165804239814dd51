#!/usr/bin/env bash
# Instructions per request, the figure to optimise against: wall-clock figures on a shared
# machine move ±20 % from run to run, instruction counts do not. plugd and its plugins run
# under valgrind's callgrind; after a warm-up the counters are zeroed, a fixed number of
# requests is sent one after another on one kept-alive connection, the counters are dumped, and
# each process's instructions are divided by the number of requests. Three workloads:
#   proxy    GET /plugins/hello/hello          (plugd + the hello example plugin)
#   hook     POST /hooks/bench, a collect hook  (plugd + one handler plugin)
#   hook10   POST /hooks/fan, a collect hook    (plugd + ten handler plugins, one of them h)
#   service  POST /plugins/a/call/text.upper    (plugd + plugin a + plugin b)
# Installs valgrind when absent. Settings: REQUESTS (default 2000), WARMUP (default 300),
# PROFILE=DIR keeps each workload's callgrind dumps in DIR/<workload>/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-300}

. scripts/lib.sh
command -v valgrind >/dev/null || install_packages valgrind
cargo build --release -q -p plugd -p plugd-example-hello -p plugd-testkit

work=$(mktemp -d /tmp/plugd-instructions.XXXXXX)
trap 'stop_plugd; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
host_token="bench-host-token-$RANDOM$RANDOM"
echo_bin="$PWD/target/release/plugd-testkit-echo"

# Each plugin runs under callgrind through its manifest's command. valgrind reserves much
# address space, so the memory limit is raised for it; and it refuses a process a descriptor
# limit other than the one it started with, so plugd and the plugins get the same one.
FILES=4096
ulimit -Sn "$FILES"
VALGRIND=$(command -v valgrind)
# plugin NAME PROGRAM SERVICES HOOKS
plugin() {
  mkdir -p "$work/plugins/$1"
  cat >"$work/plugins/$1/plugin.toml" <<TOML
name = "$1"
version = "1"
command = "$VALGRIND"
args = ["--tool=callgrind", "--callgrind-out-file=$work/cg.%p", "--log-file=$work/valgrind.%p.log", "$2"]
[env]
ECHO_SERVICES = "$3"
ECHO_HOOKS = "$4"
[limits]
memory = "16GiB"
tasks = 4096
open_files = $FILES
TOML
}
plugin hello "$PWD/target/release/plugd-example-hello" "" ""
plugin a "$echo_bin" "" ""
plugin b "$echo_bin" "text.upper:upper" ""
plugin h "$echo_bin" "" "bench:collect:0:echo;fan:collect:0:echo"
for i in 1 2 3 4 5 6 7 8 9; do plugin "h$i" "$echo_bin" "" "fan:collect:0:echo"; done

port=$(free_port)
PLUGD_HOST_TOKEN="$host_token" PLUGD_LOG=warn valgrind --tool=callgrind \
  --callgrind-out-file="$work/cg.%p" --log-file="$work/valgrind.%p.log" \
  target/release/plugd serve --listen "127.0.0.1:$port" --plugins-dir "$work/plugins" \
  --data-dir "$work/data" --runtime-dir "$work/run" --handshake-timeout 300s \
  --request-timeout 120s --hook-timeout 120s --monitor-interval 0s --cgroups false \
  >"$work/out" 2>"$work/err" &
plugd_pid=$!
for _ in $(seq 1200); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.25
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/err" >&2; exit 1; }

# send METHOD PATH COUNT: COUNT requests on one kept-alive connection; fails on a non-2xx.
send() {
  python3 - "$port" "$1" "$2" "$3" "$host_token" <<'PY'
import http.client, sys
port, method, path, count, token = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=120)
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
body = b'"payload"' if method == "POST" else None
for _ in range(count):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status}")
PY
}

# Instructions (Ir) of every process since the last zeroing, as "command Ir" lines, from a
# fresh dump of each.
dump() {
  rm -f "$work"/cg.*.[0-9]*
  callgrind_control --dump >/dev/null 2>&1
  # With PROFILE=DIR, each workload's dumps are kept there for callgrind_annotate.
  if [ -n "${PROFILE:-}" ]; then mkdir -p "$PROFILE/$1" && cp "$work"/cg.*.[0-9]* "$PROFILE/$1/"; fi
  for f in "$work"/cg.*.[0-9]*; do
    awk '/^cmd:/ { cmd = $2; n = split(cmd, parts, "/"); cmd = parts[n] } /^(summary|totals):/ { ir = $2 } END { print cmd, ir }' "$f"
  done
}

measure() {
  local name=$1 method=$2 path=$3
  send "$method" "$path" "$WARMUP"
  callgrind_control --zero >/dev/null 2>&1
  send "$method" "$path" "$REQUESTS"
  dump "$name" | awk -v n="$REQUESTS" -v w="$name" '
    # Plugins that took part (idle ones answer only pings: left out of the names).
    { if ($1 == "plugd") p += $2; else { q += $2; if ($2 / n > 1000) took[$1]++ } }
    END {
      for (c in took) names = names (names ? " + " : "") (took[c] > 1 ? took[c] " x " : "") c
      printf "%-10s %14.0f %14.0f %14.0f   %s\n", w, p / n, q / n, (p + q) / n, names
    }'
}

echo "instructions per request (callgrind, $REQUESTS requests after $WARMUP to warm up)"
printf '%-10s %14s %14s %14s   %s\n' "workload" "plugd" "plugins" "total" "plugins taking part"
measure proxy GET /plugins/hello/hello
measure hook POST /hooks/bench
measure hook10 POST /hooks/fan
measure service POST /plugins/a/call/text.upper
