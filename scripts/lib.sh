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
