#!/usr/bin/env bash
# Proxy benchmark: GET /plugins/hello/hello, same load tool and connections, in one run, against
#   (a) the same handler served in-process by axum          — the limit;
#   (b) nginx proxying to that handler on a Unix socket      — what users run instead;
#   (c) plugd proxying to the hello example plugin           — this project.
# The three are measured in interleaved rounds (a, b, c, a, b, c, …) so a burst of other load
# on the machine falls on every setup alike; each round's figures are printed, then the medians
# and the ratios c/a and c/b of the median requests/s (and the median of the per-round ratios).
# Installs wrk and nginx when absent (Debian packages). Settings: ROUNDS (default 5),
# DURATION of each measurement (default 5s), CONNECTIONS (default 64), THREADS (default 2),
# PLUGD_BIN (the plugd of setup c, by default this checkout's release build) and HELLO_BIN (its
# hello plugin, likewise): set them to compare builds in the same period.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}

. scripts/lib.sh
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
install_packages "${need[@]}"

cargo build --release -q -p plugd -p plugd-bench -p plugd-example-hello

bench_workdir plugd-bench


port_a=$(free_port); port_b=$(free_port); port_c=$(free_port)

# (a) in-process axum on TCP.
target/release/plugd-bench --tcp "127.0.0.1:$port_a" >"$work/a.log" 2>&1 & pids+=($!)

# (b) nginx -> axum on a Unix socket, upstream keep-alive as a tuned deployment would use.
target/release/plugd-bench --unix "$work/upstream.sock" >"$work/b.log" 2>&1 & pids+=($!)
start_nginx_proxy "$work" "$port_b" "$work/upstream.sock"

# (c) plugd with the hello example plugin only.
mkdir -p "$work/plugins/hello"
hello_bin=$(realpath "${HELLO_BIN:-target/release/plugd-example-hello}")
sed "s|^command = .*|command = \"$hello_bin\"|" plugins/hello/plugin.toml >"$work/plugins/hello/plugin.toml"
PLUGD_LOG=warn "${PLUGD_BIN:-target/release/plugd}" serve --listen "127.0.0.1:$port_c" --plugins-dir "$work/plugins" \
  --data-dir "$work/data" --runtime-dir "$work/run" >"$work/c.log" 2>&1 & pids+=($!)

path=/plugins/hello/hello
wait_http "http://127.0.0.1:$port_a$path"
wait_http "http://127.0.0.1:$port_b$path"
wait_http "http://127.0.0.1:$port_c$path"


echo "GET $path, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, $(nproc) cores"
for url in "http://127.0.0.1:$port_a$path" "http://127.0.0.1:$port_b$path" "http://127.0.0.1:$port_c$path"; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null   # warm-up
done
printf '%-6s %-4s %12s %10s %10s\n' "round" "" "requests/s" "p50 ms" "p99 ms"
: >"$work/rounds"
for round in $(seq "$ROUNDS"); do
  for setup in a b c; do
    port_var="port_$setup"
    read -r rps p50 p99 < <(measure "http://127.0.0.1:${!port_var}$path")
    printf '%-6s %-4s %12.0f %10.3f %10.3f\n' "$round" "($setup)" "$rps" "$p50" "$p99"
    echo "$round $setup $rps $p50 $p99" >>"$work/rounds"
  done
done

# Medians of each column per setup, and of the per-round ratios.
col() { awk -v s="$1" -v c="$2" '$2 == s { print $c }' "$work/rounds" | median; }
a_rps=$(col a 3); a_p50=$(col a 4); a_p99=$(col a 5)
b_rps=$(col b 3); b_p50=$(col b 4); b_p99=$(col b 5)
c_rps=$(col c 3); c_p50=$(col c 4); c_p99=$(col c 5)
ca_round=$(awk '{ r[$1, $2] = $3 } END { for (k = 1; (k, "a") in r; k++) print r[k, "c"] / r[k, "a"] }' "$work/rounds" | median)
cb_round=$(awk '{ r[$1, $2] = $3 } END { for (k = 1; (k, "a") in r; k++) print r[k, "c"] / r[k, "b"] }' "$work/rounds" | median)

echo
echo "medians over $ROUNDS rounds:"
printf '%-34s %12s %10s %10s\n' "setup" "requests/s" "p50 ms" "p99 ms"
printf '%-34s %12.0f %10.3f %10.3f\n' "(a) axum in-process (limit)" "$a_rps" "$a_p50" "$a_p99"
printf '%-34s %12.0f %10.3f %10.3f\n' "(b) nginx -> axum over UDS" "$b_rps" "$b_p50" "$b_p99"
printf '%-34s %12.0f %10.3f %10.3f\n' "(c) plugd -> hello plugin" "$c_rps" "$c_p50" "$c_p99"
awk -v a="$a_rps" -v b="$b_rps" -v c="$c_rps" -v ca="$ca_round" -v cb="$cb_round" \
  'BEGIN { printf "ratio c/a = %.2f   ratio c/b = %.2f   (median of per-round ratios: c/a %.2f, c/b %.2f)\n", c/a, c/b, ca, cb }'
