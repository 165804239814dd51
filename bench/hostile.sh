#!/usr/bin/env bash
# Attacks plugd as a hostile plugin and a hostile client would (request flood, huge handshake,
# deep hook payloads, KV abuse, idle connections under a low nofile, slowloris, a stderr flood,
# answers with unknown ids, a setsid daemon), one attack at a time on a fresh plugd, and prints a
# table: plugd's peak RSS and RSS after, the CPU it spent, the latency of another plugin's route
# and of /healthz meanwhile, how long SIGTERM took, and how the attack ended.
#
#   bench/hostile.sh [flood handshake hooks kv fds slowloris stderr stray setsid setsid-nocg]
#   PLUGD_BIN=/path/to/plugd bench/hostile.sh   # measure another build (say, an older commit)
#   DURATION=8                                   # seconds per timed attack
#
# The figures are about bounds (memory held, hangs, log volume), not speed: the debug build is
# what the test suite uses, and what this measures unless PLUGD_BIN says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
exec python3 bench/hostile.py "$@"
