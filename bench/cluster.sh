#!/usr/bin/env bash
# Propagation across workers: WORKERS plugd workers (10) on one throwaway PostgreSQL cluster
# (started here from the machine's server binaries, as the postgres user when run as root).
# Prints p50 and p99 of the time from an admin change on the first worker to the change being
# live on all the others (observed on each worker's live stream, then again by polling each
# worker's /readyz every millisecond, which loads the same cores), and the sustained admin
# writes per second through all of them. Then
# an outage: wrk drives every worker's plugin route while PostgreSQL is stopped for
# OUTAGE_SECONDS (5), and the script prints the requests served and failed meanwhile and the
# time from PostgreSQL's return to an admin change being live on every worker. Settings:
# WORKERS (10), ROUNDS (100), WRITE_SECONDS (5), OUTAGE_SECONDS (5), CG (true: a cgroup per
# plugin instance where the machine allows it; false: none), PLUGD_BIN (the plugd to measure, by
# default this checkout's release build), ECHO_RUNTIME (passed through to the test plugin:
# current_thread runs it on tokio's single-threaded runtime). Sockets go on tmpfs, as under
# systemd's RuntimeDirectory. Installs postgresql and wrk when absent.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
install_packages "${need[@]}"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cargo build --release -q -p plugd -p plugd-testkit -p plugd-bench

work=$(mktemp -d /tmp/plugd-cluster.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
run=$(runtime_tmpfs "$work")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work" "$run"
}
trap cleanup EXIT

mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
pgport=$(free_port)
as_pg "$pgbin/initdb" -D "$work/pg/data" -A trust -U postgres --no-sync >/dev/null
pg_start() {
  as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-p $pgport -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off ${PG_OPTIONS:-}" start >/dev/null
}
pg_start
url="postgres://postgres@127.0.0.1:$pgport/postgres"
token="bench-token-0123456789abcdef"

WORKERS=${WORKERS:-10}
urls=()
echo "$WORKERS workers, $(nproc) cores"
for w in $(seq "$WORKERS"); do
  # echo: toggled by the propagation benchmark, then serves the load during the outage.
  # flip: toggled after the outage, so the load on echo is untouched.
  for p in echo flip; do
    mkdir -p "$work/$w/plugins/$p"
    printf 'name = "%s"\nversion = "1"\ncommand = "%s"\n[settings.greeting]\ntype = "string"\n' \
      "$p" "$PWD/target/release/plugd-testkit-echo" >"$work/$w/plugins/$p/plugin.toml"
  done
  port=$(free_port)
  PLUGD_CGROUPS=${CG:-true} PLUGD_LOG=${PLUGD_LOG:-warn} PLUGD_DATABASE_URL="$url" PLUGD_ADMIN_TOKEN="$token" \
    PLUGD_SECRET_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= "${PLUGD_BIN:-target/release/plugd}" serve \
    --listen "127.0.0.1:$port" --plugins-dir "$work/$w/plugins" --data-dir "$work/$w/data" \
    --runtime-dir "$run/$w" >"$work/$w/out" 2>"$work/$w/err" &
  pids+=($!)
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  urls+=("http://127.0.0.1:$port")
done
target/release/plugd-bench-propagation "$token" "${urls[@]}"

# The outage: every worker keeps serving while the database is away.
wait_converged() {
  for _ in $(seq 600); do
    # Not a pipe: under pipefail, grep -q leaving early could fail curl with SIGPIPE.
    grep -q '"converged":true' <<<"$(curl -sf -X POST -H "Authorization: Bearer $token" \
      "${urls[0]}/admin/plugins/$1?wait=10s")" && return 0
    sleep 0.05
  done
  return 1
}
wait_converged echo/enable
outage=${OUTAGE_SECONDS:-5}
echo
echo "database outage of ${outage}s under load (wrk -t1 -c8 on each worker's plugin route):"
wrks=()
for u in "${urls[@]}"; do
  wrk -t1 -c8 -d"$((outage + 6))s" "$u/plugins/echo/echo/1" >"$work/wrk-${u##*:}" 2>&1 &
  wrks+=($!)
done
sleep 2
as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m fast -w stop >/dev/null
down=$(date +%s%N)
curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST \
  -H "Authorization: Bearer $token" "${urls[0]}/admin/plugins/flip/disable" >"$work/code" &
during=$!
sleep "$outage"
wait "$during" || true
pg_start
back=$(date +%s%N)
wait_converged flip/disable || { echo "the cluster did not converge after the outage" >&2; exit 1; }
done_ns=$(date +%s%N)
wait "${wrks[@]}"
ok=0; bad=0
for f in "$work"/wrk-*; do
  n=$(awk '/requests in/ {print $1}' "$f")
  e=$(awk '/Non-2xx/ {print $NF}' "$f"); e=${e:-0}
  s=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$f"); s=${s:-0}
  ok=$((ok + n - e)); bad=$((bad + e + s))
  grep -E 'Non-2xx|Socket errors' "$f" | sed "s/^ */  ${f##*wrk-}: /" || true
done
echo "  admin write during the outage answered: $(cat "$work/code")"
echo "  requests answered 2xx: $ok, failed (non-2xx or socket errors): $bad"
echo "  from PostgreSQL back to a change live on every worker: $(((done_ns - back) / 1000000)) ms (outage $(((back - down) / 1000000)) ms)"
