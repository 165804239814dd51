#!/usr/bin/env bash
# Streaming benchmark: the same streaming handlers, the same client, in one run, against
#   (a) the handlers served in-process by axum                 — the limit;
#   (b) nginx (no buffering) proxying to them on a Unix socket — what users run instead;
#   (c) plugd proxying to the `stream` example plugin          — this project.
# Each round measures, per setup (interleaved a, b, c, a, b, c, …): download and upload
# throughput of a SIZE-byte body (MB/s, 10⁶ bytes), the latency of Server-Sent Events from the
# handler making an event to the client parsing it (p50, p99 of 400 events), the WebSocket echo
# round trip (p50, p99 of 2000 messages, one at a time) and WebSocket messages/s with 64 in
# flight. Then the medians, the ratios against nginx, and the peak RSS of plugd and the plugin.
# Installs nginx when absent (Debian package). Settings: ROUNDS (default 3), SIZE (default 1 GiB).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-1073741824}

. scripts/lib.sh
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || install_packages nginx-light

cargo build --release -q -p plugd -p plugd-bench -p plugd-example-stream

bench_workdir plugd-bench

port_a=$(free_port); port_b=$(free_port); port_c=$(free_port)
bench=target/release/plugd-bench-stream

# (a) in-process axum on TCP.
$bench serve --tcp "127.0.0.1:$port_a" >"$work/a.log" 2>&1 & pids+=($!)

# (b) nginx -> axum on a Unix socket, passing bodies as they come and WebSocket upgrades.
$bench serve --unix "$work/upstream.sock" >"$work/b.log" 2>&1 & pids+=($!)
start_nginx_proxy "$work" "$port_b" "$work/upstream.sock" streaming

# (c) plugd with the stream example plugin only.
mkdir -p "$work/plugins/stream"
sed "s|^command = .*|command = \"$PWD/target/release/plugd-example-stream\"|" plugins/stream/plugin.toml >"$work/plugins/stream/plugin.toml"
PLUGD_LOG=warn target/release/plugd serve --listen "127.0.0.1:$port_c" --plugins-dir "$work/plugins" \
  --data-dir "$work/data" --runtime-dir "$work/run" >"$work/c.log" 2>&1 & plugd=$!
pids+=("$plugd")

path="/plugins/stream/download?size=1"
wait_http "http://127.0.0.1:$port_a$path"
wait_http "http://127.0.0.1:$port_b$path"
wait_http "http://127.0.0.1:$port_c$path"
plugin=$(pgrep -f -n "$PWD/target/release/plugd-example-stream")

echo "streams of $SIZE bytes, $ROUNDS interleaved rounds, $(nproc) cores"
for port in "$port_a" "$port_b" "$port_c"; do   # warm-up
  $bench measure "http://127.0.0.1:$port" $((64 << 20)) >/dev/null
done
printf '%-6s %-4s %10s %10s %9s %9s %9s %9s %10s\n' round "" "down MB/s" "up MB/s" \
  "sse p50" "sse p99" "ws p50" "ws p99" "ws msg/s"
: >"$work/rounds"
for round in $(seq "$ROUNDS"); do
  for setup in a b c; do
    port_var="port_$setup"
    read -r down up sse50 sse99 ws50 ws99 rate < <($bench measure "http://127.0.0.1:${!port_var}" "$SIZE")
    printf '%-6s %-4s %10.0f %10.0f %7dus %7dus %7dus %7dus %10.0f\n' "$round" "($setup)" \
      "$down" "$up" "$sse50" "$sse99" "$ws50" "$ws99" "$rate"
    echo "$round $setup $down $up $sse50 $sse99 $ws50 $ws99 $rate" >>"$work/rounds"
  done
done

col() { awk -v s="$1" -v c="$2" '$2 == s { print $c }' "$work/rounds" | median; }
hwm() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
echo
echo "medians:"
for setup in a b c; do
  printf '%-11s %10.0f %10.0f %7dus %7dus %7dus %7dus %10.0f\n' "($setup)" \
    "$(col $setup 3)" "$(col $setup 4)" "$(col $setup 5)" "$(col $setup 6)" \
    "$(col $setup 7)" "$(col $setup 8)" "$(col $setup 9)"
done
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", x / y }'; }
echo
# The median of the per-round ratios c/b of column $1.
per_round() { awk -v c="$1" '{ r[$1, $2] = $c } END { for (k = 1; (k, "a") in r; k++) print r[k, "c"] / r[k, "b"] }' "$work/rounds" | median; }
echo "plugd against nginx (c/b): download $(ratio "$(col c 3)" "$(col b 3)")x, upload $(ratio "$(col c 4)" "$(col b 4)")x (goal >= 1.00; per round, median: $(per_round 3 | xargs printf %.2f)x, $(per_round 4 | xargs printf %.2f)x)"
minus() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.0f", x - y }'; }
echo "SSE p99 added by plugd over the direct server (c - a): $(minus "$(col c 6)" "$(col a 6)") us (goal < 1000 us); nginx adds $(minus "$(col b 6)" "$(col a 6)") us"
echo "WebSocket round trip p50 against nginx (c/b): $(ratio "$(col c 7)" "$(col b 7)")x (goal <= 1.50); messages/s $(ratio "$(col c 9)" "$(col b 9)")x"
echo "peak RSS: plugd $(hwm "$plugd") MiB, the stream plugin $(hwm "$plugin") MiB (goal < 64 MiB each)"
