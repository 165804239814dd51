#!/usr/bin/env bash
# Python benchmark: the hello route (GET /plugins/hello-py/hello, "hello, world") written with
# the Python SDK and run by plugd, against the same handler in the stack a Python team would
# otherwise run, with the same load tool and connections, in one run:
#   (u) uvicorn serving a minimal ASGI app on TCP      — the Python server alone;
#   (n) nginx proxying to that uvicorn on a Unix socket — how it is deployed;
#   (p) plugd proxying to the Python plugin            — this project.
# uvicorn is installed with its "standard" extra (uvloop, httptools), as deployed; each server
# is one process, as the plugin is. Rounds are interleaved (u, n, p, u, n, p, …) and the
# medians and the ratios p/u and p/n of the median requests/s are printed.
# Installs wrk and nginx when absent (Debian packages) and creates target/bench-venv.
# Settings: ROUNDS (default 3), DURATION (default 5s), CONNECTIONS (default 64), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}

. scripts/lib.sh
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
install_packages "${need[@]}"

cargo build --release -q -p plugd
venv=target/bench-venv
setup_plugin_venv "$venv"
if ! cmp -s bench/python/requirements.txt "$venv/requirements.txt"; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r bench/python/requirements.txt
  cp bench/python/requirements.txt "$venv/requirements.txt"
fi

bench_workdir plugd-bench-py


port_u=$(free_port); port_n=$(free_port); port_p=$(free_port)
uvicorn=("$venv/bin/uvicorn" --app-dir bench/python hello_asgi:app --no-access-log --log-level warning)

# (u) uvicorn alone on TCP.
"${uvicorn[@]}" --host 127.0.0.1 --port "$port_u" >"$work/u.log" 2>&1 & pids+=($!)

# (n) nginx -> uvicorn on a Unix socket, upstream keep-alive.
"${uvicorn[@]}" --uds "$work/upstream.sock" >"$work/n.log" 2>&1 & pids+=($!)
start_nginx_proxy "$work" "$port_n" "$work/upstream.sock"

# (p) plugd with the Python hello plugin only.
mkdir -p "$work/plugins/hello-py"
cp bench/python/hello_plugin.py "$work/plugins/hello-py/main.py"
cat >"$work/plugins/hello-py/plugin.toml" <<TOML
name = "hello-py"
version = "0.1.0"
description = "hello, in Python"
author = "bench"
command = "$PWD/$venv/bin/python"
args = ["main.py"]
TOML
PLUGD_LOG=warn target/release/plugd serve --listen "127.0.0.1:$port_p" --plugins-dir "$work/plugins" \
  --data-dir "$work/data" --runtime-dir "$work/run" >"$work/p.log" 2>&1 & pids+=($!)

path=/plugins/hello-py/hello
for s in u n p; do port_var="port_$s"; wait_http "http://127.0.0.1:${!port_var}$path"; done


echo "GET $path, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, $(nproc) cores"
for s in u n p; do
  port_var="port_$s"; wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:${!port_var}$path" >/dev/null
done
printf '%-6s %-4s %12s %10s %10s\n' "round" "" "requests/s" "p50 ms" "p99 ms"
: >"$work/rounds"
for round in $(seq "$ROUNDS"); do
  for s in u n p; do
    port_var="port_$s"
    read -r rps p50 p99 < <(measure "http://127.0.0.1:${!port_var}$path")
    printf '%-6s %-4s %12.0f %10.3f %10.3f\n' "$round" "($s)" "$rps" "$p50" "$p99"
    echo "$round $s $rps $p50 $p99" >>"$work/rounds"
  done
done

col() { awk -v s="$1" -v c="$2" '$2 == s { print $c }' "$work/rounds" | median; }
echo
echo "medians over $ROUNDS rounds:"
printf '%-34s %12s %10s %10s\n' "setup" "requests/s" "p50 ms" "p99 ms"
printf '%-34s %12.0f %10.3f %10.3f\n' "(u) uvicorn alone" "$(col u 3)" "$(col u 4)" "$(col u 5)"
printf '%-34s %12.0f %10.3f %10.3f\n' "(n) nginx -> uvicorn over UDS" "$(col n 3)" "$(col n 4)" "$(col n 5)"
printf '%-34s %12.0f %10.3f %10.3f\n' "(p) plugd -> Python plugin" "$(col p 3)" "$(col p 4)" "$(col p 5)"
awk -v u="$(col u 3)" -v n="$(col n 3)" -v p="$(col p 3)" \
  'BEGIN { printf "ratio p/u = %.2f   ratio p/n = %.2f   (goal: p/n >= 1)\n", p/u, p/n }'
