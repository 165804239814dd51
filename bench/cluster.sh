#!/usr/bin/env bash
# Propagation across workers: three plugd workers on one throwaway PostgreSQL cluster (started
# here from the machine's server binaries, as the postgres user when run as root). Prints p50
# and p99 of the time from an admin change on worker A to the change being live on B and C,
# and the sustained admin writes per second through all three. Settings: ROUNDS (100),
# WRITE_SECONDS (5). Installs postgresql when absent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cargo build --release -q -p plugd -p plugd-testkit -p plugd-bench

work=$(mktemp -d /tmp/plugd-cluster.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
pgport=$(free_port)
as_pg "$pgbin/initdb" -D "$work/pg/data" -A trust -U postgres --no-sync >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
  -o "-p $pgport -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null
url="postgres://postgres@127.0.0.1:$pgport/postgres"
token="bench-token-0123456789abcdef"

urls=()
for w in a b c; do
  mkdir -p "$work/$w/plugins/echo"
  printf 'name = "echo"\nversion = "1"\ncommand = "%s"\n' "$PWD/target/release/plugd-testkit-echo" \
    >"$work/$w/plugins/echo/plugin.toml"
  port=$(free_port)
  PLUGD_LOG=warn PLUGD_DATABASE_URL="$url" PLUGD_ADMIN_TOKEN="$token" target/release/plugd serve \
    --listen "127.0.0.1:$port" --plugins-dir "$work/$w/plugins" --data-dir "$work/$w/data" \
    --runtime-dir "$work/$w/run" >"$work/$w/out" 2>"$work/$w/err" &
  pids+=($!)
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  urls+=("http://127.0.0.1:$port")
done
target/release/plugd-bench-propagation "$token" "${urls[@]}"
