# Shell helpers shared by scripts/test and the bench/ scripts; sourced, not run.

# Installs Debian packages (apt-get update only when the first try fails). No arguments: no-op.
install_packages() {
  [ $# -gt 0 ] || return 0
  echo "installing $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

# Prints a free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Stops the plugd started in the background whose pid is in $plugd_pid, if any.
plugd_pid=""
stop_plugd() {
  if [ -n "$plugd_pid" ]; then
    kill "$plugd_pid" 2>/dev/null || true
    wait "$plugd_pid" 2>/dev/null || true
    plugd_pid=""
  fi
}

# The Python tools the tests run (an OpenAPI validator, schemathesis), in a virtual environment
# of the project's own: target/test-venv. Versions are pinned in scripts/test-requirements.txt.
setup_test_venv() {
  local venv=target/test-venv
  if [ ! -x "$venv/bin/schemathesis" ] || ! cmp -s scripts/test-requirements.txt "$venv/requirements.txt"; then
    echo "creating $venv" >&2
    python3 -m venv "$venv" 2>/dev/null || { install_packages python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/test-requirements.txt
    cp scripts/test-requirements.txt "$venv/requirements.txt"
  fi
}

# Debian's Chromium and the npm packages of the browser tests (playwright-core only: it never
# downloads a browser; the tests drive /usr/bin/chromium).
setup_browser_tests() {
  command -v chromium >/dev/null || install_packages chromium
  command -v npm >/dev/null || install_packages nodejs npm
  if [ ! -d supervisor/tests/ui/node_modules/playwright-core ]; then
    (cd supervisor/tests/ui && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# A virtual environment with the Python SDK (plugin-runtime/python) installed, for the Python
# plugins: $1, default target/py-venv (the example plugins' manifests run its python). It is
# reinstalled when the SDK's sources change.
setup_plugin_venv() {
  local venv=${1:-target/py-venv}
  local stamp
  stamp=$(cd plugin-runtime/python && find pyproject.toml src -type f -not -path '*/__pycache__/*' | sort | xargs sha256sum | sha256sum | cut -c1-64)
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv" 2>/dev/null || { install_packages python3-venv && python3 -m venv "$venv"; }
  fi
  if [ "$(cat "$venv/.plugd-sdk" 2>/dev/null)" != "$stamp" ]; then
    echo "installing the Python SDK into $venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check ./plugin-runtime/python
    rm -rf plugin-runtime/python/build
    echo "$stamp" > "$venv/.plugd-sdk"
  fi
}

# bench/: waits until URL $1 answers 2xx (10 s at most).
wait_http() {
  for _ in $(seq 200); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2; return 1
}

# bench/: prints "rps p50_ms p99_ms" for one URL under wrk ($THREADS, $CONNECTIONS, $DURATION);
# fails on any non-2xx answer.
measure() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec:/ { rps=$2 }
    /^ +50%/ { p50=ms($2) }
    /^ +99%/ { p99=ms($2) }
    /Non-2xx/ { bad=$NF }
    END { if (bad) { print "non-2xx responses: " bad > "/dev/stderr"; exit 1 } printf "%s %.3f %.3f\n", rps, p50, p99 }'
}

# bench/: makes $work, a directory /tmp/NAME.XXXXXX, and at exit kills the processes whose
# pids are in the array $pids and the nginx whose pid is in $work/nginx.pid, then removes it:
# bench_workdir NAME.
bench_workdir() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}

# bench/: prints a new directory for plugd's sockets on tmpfs (/dev/shm), where a systemd
# deployment has its runtime directory (/run), else under DIR. Socket files created and
# removed at every plugin start cost a disk file system far more (ext4 searches its inode
# bitmap past recently deleted inodes) than a start under systemd pays.
runtime_tmpfs() {
  mktemp -d /dev/shm/plugd-run.XXXXXX 2>/dev/null || mktemp -d "$1/run.XXXXXX"
}

# bench/: the median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# bench/: starts nginx (as a daemon, pid in DIR/nginx.pid) on 127.0.0.1:PORT proxying with
# upstream keep-alive to the Unix socket SOCKET: start_nginx_proxy DIR PORT SOCKET [streaming].
# With "streaming", nginx passes bodies both ways as they come (no buffering, no size limit)
# and WebSocket upgrades, as it is configured in front of a streaming application.
start_nginx_proxy() {
  local dir=$1 port=$2 socket=$3 user_line="" streaming="" connection='""'
  [ "$(id -u)" = 0 ] && user_line="user root;"
  [ "${4:-}" = streaming ] && connection='$connection_upgrade' && streaming="
      proxy_buffering off;
      proxy_request_buffering off;
      client_max_body_size 0;
      proxy_read_timeout 300s;
      proxy_set_header Upgrade \$http_upgrade;"
  cat >"$dir/nginx.conf" <<CONF
$user_line
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream app { server unix:$socket; keepalive 128; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection $connection;$streaming
    }
  }
}
CONF
  "$(command -v nginx || echo /usr/sbin/nginx)" -p "$dir" -c "$dir/nginx.conf" -g 'daemon on;'
}
