#!/usr/bin/env bash
# Soak test (not run in CI): the release server under the release loadgen
# with many connections for a long time, on each backend. Passes when loadgen
# reports zero mismatches and zero errors (it verifies echoes by default and
# exits non-zero on a mismatch or error), the server drains and exits 0, and
# its memory stays flat (RSS after warm-up vs at the end, from /proc; start,
# warm-up and end are printed).
#
# Usage: scripts/soak.sh [--conns N] [--duration SECS] [--backend uring|epoll|both]
#                        [--workers N] [--out DIR (default target/soak)]
#                        [--churn [--messages-per-conn N]]
# Defaults: 50,000 connections, 60 s, both backends, one worker per CPU.
#
# --churn: connection churn instead of long-lived connections (loadgen
# --messages-per-conn N, default 1; --conns, default 1,000, open at once,
# each replaced when it closes), for --duration (default 600 s), verified.
# Passes when loadgen exits 0 (no mismatch, no failed or lost connection),
# it completed at least 1,000,000 connections per 600 s of --duration
# ("millions" in 10 minutes; scaled so a short run can be checked), and the
# server ends as it was after the warm-up: no connection open and no direct
# descriptor held once loadgen is done, its slab no larger than twice its
# warm-up size (a capacity may double once as closes trail; a leak grows it
# with every connection), its descriptors back to what it had before the
# load, and its RSS within the margin below. All of it read from the
# server's --stats lines and /proc, and printed.
#
# The epoll backend holds every connection as a file descriptor of the
# process, so it is capped below RLIMIT_NOFILE (20,000 on our machines) and the
# script says so. The io_uring backend keeps connections in each ring's
# direct-descriptor table (RLIMIT_NOFILE slots per worker): the script raises
# its worker count to fit the connections, and says so. loadgen spreads its connections over
# 127.0.0.x source addresses, so 50,000 fit in the ephemeral port range.
set -euo pipefail
cd "$(dirname "$0")/.."

conns=50000
duration=60
backends="uring epoll"
workers=$(nproc)
out=target/soak
# RSS may grow by this much (KiB) plus 5% between warm-up and the end.
rss_margin_kib=8192
churn=0
per_conn=1
conns_given=
duration_given=

while [ $# -gt 0 ]; do
  case "$1" in
    --conns) conns=$2; conns_given=1; shift 2 ;;
    --duration) duration=$2; duration_given=1; shift 2 ;;
    --churn) churn=1; shift ;;
    --messages-per-conn) per_conn=$2; shift 2 ;;
    --backend) case "$2" in both) backends="uring epoll" ;; uring|epoll) backends=$2 ;;
                 *) echo "soak.sh: --backend must be uring, epoll or both" >&2; exit 2 ;; esac
               shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$churn" = 1 ]; then
  [ -n "$conns_given" ] || conns=1000
  [ -n "$duration_given" ] || duration=600
fi
for n in "$conns" "$duration" "$workers" "$per_conn"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: '$n' is not a positive number" >&2; exit 2; }
done

# Where cargo puts builds: honours CARGO_TARGET_DIR and build.target-dir.
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') ||
  { echo "soak.sh: 'cargo metadata' failed: cannot tell where cargo puts the binaries" >&2; exit 2; }
server=$target_dir/release/uring-echo
loadgen=$target_dir/release/loadgen
cargo build --release --bin uring-echo --bin loadgen ||
  { echo "soak.sh: cargo build --release --bin uring-echo --bin loadgen failed" >&2; exit 2; }
mkdir -p "$out"

nofile=$(ulimit -n)
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# The value of KEY in a --stats line.
stat_of() { sed -n "s/.* $2=\([0-9]*\).*/\1/p" <<<"$1"; }

failed=0
for backend in $backends; do
  n=$conns
  if [ "$backend" = epoll ]; then
    # One descriptor per connection, plus the server's own (listeners, epoll,
    # eventfds, stdio): keep 100 in reserve.
    cap=$((nofile - 100))
    if [ "$n" -gt "$cap" ]; then
      echo "== epoll: capped at $cap connections (RLIMIT_NOFILE is $nofile; epoll needs one descriptor per connection)"
      n=$cap
    fi
  fi
  w=$workers
  if [ "$backend" = uring ]; then
    # Each ring's direct-descriptor table has RLIMIT_NOFILE slots, and SO_REUSEPORT
    # spreads connections unevenly: keep a quarter in reserve per worker.
    need=$(( (n + nofile * 3 / 4 - 1) / (nofile * 3 / 4) ))
    if [ "$need" -gt "$w" ]; then
      echo "== uring: $need workers for $n connections ($nofile direct descriptors per ring)"
      w=$need
    fi
  fi

  log="$out/server-$backend.log"
  json="$out/loadgen-$backend.json"
  # Exit 0 on SIGTERM after draining; stats every 5 s into the log.
  stats_every=5
  max_conns=$((n + 1000))
  if [ "$churn" = 1 ]; then
    stats_every=1
    # The server's closes trail loadgen's (which opens a replacement at once):
    # it may hold several times --conns for a moment, which is not a limit
    # this soak is about.
    max_conns=$((n * 10 + 1000))
  fi
  "$server" --addr 127.0.0.1 --port 0 --backend "$backend" --workers "$w" \
    --max-conns "$max_conns" --stats "$stats_every" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  port=$(sed -n 's/.* listening on [^ ]*:\([0-9]*\) .*/\1/p' "$log" | head -1)
  if [ -z "$port" ]; then
    echo "== $backend: server did not start:"; cat "$log"; failed=1; continue
  fi
  rss_start=$(rss_kib "$pid")
  fds_start=$(fd_count "$pid")
  echo "== $backend: $n connections for ${duration}s on port $port (server pid $pid, RSS $rss_start KiB at start)"

  # Sample RSS every second while loadgen runs.
  rss_file="$out/rss-$backend.txt"
  : >"$rss_file"
  ( while kill -0 "$pid" 2>/dev/null; do echo "$(date +%s) $(rss_kib "$pid")" >>"$rss_file"; sleep 1; done ) &
  sampler=$!

  lg_status=0
  load_args=(--target "127.0.0.1:$port" --conns "$n" --duration "$duration" --json "$json")
  if [ "$churn" = 1 ]; then
    load_args+=(--messages-per-conn "$per_conn")
    echo "   churn: $per_conn message(s) per connection, $n open at once"
    # The server's state after the warm-up, read while the load runs.
    warm_s=$((duration / 3 < 10 ? duration / 3 + 1 : 10))
    ( sleep "$warm_s"
      echo "$(grep 'uring-echo: stats' "$log" | tail -1) rss_kib=$(rss_kib "$pid") fds=$(fd_count "$pid")" \
        >"$out/warm-$backend.txt" ) &
    warm_probe=$!
  fi
  "$loadgen" "${load_args[@]}" || lg_status=$?

  # RSS after warm-up: the sample 10 s in, or a third of the way for short runs.
  warm_at=$((duration / 3 < 10 ? duration / 3 + 1 : 11))
  rss_warm=$(awk -v at="$warm_at" 'NR == at { print $2 }' "$rss_file")
  [ -n "$rss_warm" ] || rss_warm=$rss_start
  rss_end=$(rss_kib "$pid")
  if [ "$churn" = 1 ]; then
    wait "$warm_probe" 2>/dev/null || true
    warm_line=$(cat "$out/warm-$backend.txt" 2>/dev/null || true)
    # loadgen has closed everything: wait (up to 10 s) for the server's
    # closes to catch up, then take its end state.
    end_line=
    for _ in $(seq 100); do
      end_line=$(grep 'uring-echo: stats' "$log" | tail -1)
      [ "$(stat_of "$end_line" open)" = 0 ] && break
      sleep 0.1
    done
    end_line="$end_line rss_kib=$(rss_kib "$pid") fds=$(fd_count "$pid")"
    rss_warm=$(stat_of "$warm_line" rss_kib)
    [ -n "$rss_warm" ] || rss_warm=$rss_start
    rss_end=$(stat_of "$end_line" rss_kib)
  fi
  kill "$sampler" 2>/dev/null || true
  kill -TERM "$pid"
  server_status=0
  wait "$pid" || server_status=$?
  summary=$(grep "stopped after" "$log" || true)
  errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$summary")

  echo "   loadgen exit $lg_status (report: $json)"
  if command -v python3 >/dev/null && [ -s "$json" ]; then
    python3 - "$json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("   loadgen: verify", r.get("verify"), "errors", r.get("errors"), "connections", r.get("connections"))
PY
  fi
  echo "   server exit $server_status: ${summary:-no summary}"
  echo "   server RSS: start $rss_start KiB, after warm-up $rss_warm KiB, end $rss_end KiB"

  limit=$((rss_warm + rss_warm / 20 + rss_margin_kib))
  if [ "$lg_status" -ne 0 ]; then echo "   FAIL: loadgen reported mismatches or errors"; failed=1; fi
  if [ "$server_status" -ne 0 ]; then echo "   FAIL: server exited $server_status"; failed=1; fi
  if [ "${errors:-0}" != 0 ]; then
    # Not a failure by itself: connections loadgen resets when it stops count here.
    echo "   note: the server counted errors=$errors (resets, e.g. from loadgen closing mid-echo)"
  fi
  if [ "$rss_end" -gt "$limit" ]; then
    echo "   FAIL: server memory grew from $rss_warm KiB to $rss_end KiB (limit $limit KiB)"; failed=1
  fi
  if [ "$churn" = 1 ]; then
    completed=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["connections"]["completed"], r["verify"]["mismatches"], round(r["throughput"]["conns_per_s"]))' "$json" 2>/dev/null || echo "0 unknown 0")
    read -r done_conns mismatches conns_per_s <<<"$completed"
    least=$((1000000 * duration / 600))
    echo "   churn: $done_conns connections completed ($conns_per_s/s), $mismatches mismatches; at least $least needed"
    for key in open slab_slots direct_fds fds rss_kib; do
      echo "   $key: after warm-up $(stat_of "$warm_line" "$key"), end $(stat_of "$end_line" "$key")"
    done
    echo "   server descriptors before the load: $fds_start"
    if [ "$done_conns" -lt "$least" ]; then echo "   FAIL: fewer than $least connections"; failed=1; fi
    if [ "$mismatches" != 0 ]; then echo "   FAIL: $mismatches mismatches"; failed=1; fi
    if [ "$(stat_of "$end_line" open)" != 0 ]; then echo "   FAIL: connections still open on the server"; failed=1; fi
    if [ "$(stat_of "$end_line" direct_fds)" != 0 ]; then echo "   FAIL: direct descriptors still held"; failed=1; fi
    if [ "$(stat_of "$end_line" fds)" != "$fds_start" ]; then echo "   FAIL: descriptors $fds_start before the load, $(stat_of "$end_line" fds) after"; failed=1; fi
    slab_warm=$(stat_of "$warm_line" slab_slots); slab_end=$(stat_of "$end_line" slab_slots)
    if [ "${slab_end:-0}" -gt $((2 * ${slab_warm:-0})) ]; then echo "   FAIL: slab grew from $slab_warm to $slab_end slots"; failed=1; fi
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "soak: FAILED"
  exit 1
fi
echo "soak: passed"
