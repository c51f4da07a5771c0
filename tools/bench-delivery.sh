#!/usr/bin/env bash
# Delivery benchmarks, all in one run on this machine:
#  1. End to end: 32 inbound lockstep connections for $secs s into a broker with
#     one strict destination (orderly-ackd, ACKs at once). Delivered msgs/s
#     (messages / time until the destination's lag is 0) as a ratio of the
#     ingest-only rate of an identical broker without destinations; p50/p99
#     end-to-end latency (load tool send → sink receipt).
#     For scale, the same-run ceiling of any strict (lockstep) lane: one bare
#     lockstep MLLP client (orderly-load, 1 connection) against its own
#     orderly-ackd while the 32-connection load runs into the ingest-only
#     broker. It reads no log and commits no cursor.
#  2. Against a sink with 1 ms ACK latency: N queued messages drained by a strict
#     destination vs a partitioned one with 8 lanes (keyed on PID-3.1).
#  usage: tools/bench-delivery.sh [seconds] [drain-messages]   (drain 0 skips part 2)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
drain=${2:-3000}
cargo build --release --bins >&2
bin=target/release
work=target/bench-delivery
rm -rf "$work" && mkdir -p "$work"
# Daemons start inside $(...) subshells, so their PIDs go to a file, and
# their output to files: an inherited pipe would keep a caller's `| tail` open.
cleanup() { [ -f "$work/pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done < "$work/pids"; }
trap cleanup EXIT

start_ackd() { # name delay-ms -> prints addr
  "$bin/orderly-ackd" --listen 127.0.0.1:0 --ack-delay-ms "$2" --latency-out "$work/$1.lat" > "$work/$1.out" 2>&1 &
  echo $! >> "$work/pids"
  for _ in $(seq 100); do grep -q listening "$work/$1.out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's/^orderly-ackd: listening on //p' "$work/$1.out"
}
start_broker() { # name destination-toml -> prints listener addr
  mkdir -p "$work/$1"
  printf 'data_dir = "%s"\n[[listener]]\nname = "in"\nlisten = "127.0.0.1:0"\nqueue = "q"\nmax_connections = 2048\n%s\n' "$work/$1/data" "$2" > "$work/$1/orderly.toml"
  "$bin/orderly" serve --config "$work/$1/orderly.toml" > "$work/$1/out" 2> "$work/$1/err" &
  echo $! >> "$work/pids"
  for _ in $(seq 100); do grep -q ready "$work/$1/out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's/^orderly: listener in on \([^ ]*\).*/\1/p' "$work/$1/out"
}
dest() { # name addr extra
  printf '[[destination]]\nname = "%s"\nqueue = "q"\nconnect = "%s"\n%s\n' "$1" "$2" "$3"
}
lag_zero_at() { # broker-name -> waits until every lane's lag is 0, prints epoch seconds
  for _ in $(seq 6000); do
    # One status read per poll: two could disagree, and each is a process.
    local status
    status=$("$bin/orderly" ctl --config "$work/$1/orderly.toml" status)
    if grep -q "lag=" <<<"$status" && ! grep -q "lag=[1-9]" <<<"$status"; then
      date +%s.%N; return
    fi
    sleep 0.02
  done
  echo "timeout waiting for $1 to drain" >&2; exit 1
}

echo "1. end to end ($secs s, 32 connections)" >&2
fast=$(start_ackd fast 0)
plain=$(start_broker ingest-only "")
e2e=$(start_broker e2e "$(dest sink "$fast" "")")
"$bin/orderly-load" --to "$plain" --connections 32 --duration-s "$secs" --json > "$work/ingest-only.json"
t0=$(date +%s.%N)
"$bin/orderly-load" --to "$e2e" --connections 32 --duration-s "$secs" --json > "$work/e2e-ingest.json"
t1=$(lag_zero_at e2e)
sleep 1.2 # the sink rewrites its latency file every second
e2e_lat=$(cat "$work/fast.lat")
echo "1b. lockstep ceiling: 1 bare connection to a sink during the same ingest load" >&2
bare=$(start_ackd bare 0)
"$bin/orderly-load" --to "$plain" --connections 32 --duration-s "$secs" --json > "$work/ceiling-ingest.json" &
ingest_pid=$!
"$bin/orderly-load" --to "$bare" --connections 1 --duration-s "$secs" --json > "$work/ceiling.json"
wait "$ingest_pid"

slow=""
[ "$drain" -gt 0 ] && echo "2. drain $drain messages through a 1 ms sink: strict vs 8 lanes" >&2 && slow=$(start_ackd slow 1)
drain_rate() { # broker-name destination-extra
  local addr t0 t1
  addr=$(start_broker "$1" "$(dest d "$slow" "$2")
[destination.retry]
max_attempts = 1000")
  "$bin/orderly" ctl --config "$work/$1/orderly.toml" pause d > /dev/null
  "$bin/orderly-load" --to "$addr" --connections 8 --count $((drain / 8)) --keys 5000 --json > /dev/null
  t0=$(date +%s.%N)
  "$bin/orderly" ctl --config "$work/$1/orderly.toml" resume d > /dev/null
  t1=$(lag_zero_at "$1")
  python3 -c "print(($drain // 8 * 8) / ($t1 - $t0))"
}
strict_rate=0 part_rate=0
if [ "$drain" -gt 0 ]; then
  strict_rate=$(drain_rate strict "")
  part_rate=$(drain_rate part 'ordering = "partitioned"
partition_key = "PID-3.1"
lanes = 8')
fi

python3 - "$work" "$t0" "$t1" "$e2e_lat" "$strict_rate" "$part_rate" <<'PY'
import sys, json
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lat = sys.argv[4].split()
strict, part = float(sys.argv[5]), float(sys.argv[6])
ingest_only = json.load(open(f"{work}/ingest-only.json"))
e2e = json.load(open(f"{work}/e2e-ingest.json"))
delivered = e2e["acked"] / (t1 - t0)
print(f"ingest-only (no destination), 32 conn:   {ingest_only['msgs_per_s']:9.0f} msgs/s")
print(f"ingest with one strict destination:      {e2e['msgs_per_s']:9.0f} msgs/s ({e2e['acked']} messages)")
print(f"delivered (all {e2e['acked']} delivered after {t1-t0:.2f} s): {delivered:9.0f} msgs/s")
print(f"ratio delivered / ingest-only:           {delivered/ingest_only['msgs_per_s']:.2f}  (target >= 0.8)")
print(f"end-to-end latency send→sink: p50={lat[1]}us p99={lat[2]}us over {lat[0]} messages")
ceiling = json.load(open(f"{work}/ceiling.json"))["msgs_per_s"]
print(f"lockstep ceiling (bare 1-conn client under the same load): {ceiling:9.0f} msgs/s = {ceiling/ingest_only['msgs_per_s']:.2f} of ingest-only; delivered = {delivered/ceiling:.2f} of it")
if strict == 0: sys.exit(0)
print(f"1 ms sink, strict:                       {strict:9.0f} msgs/s")
print(f"1 ms sink, partitioned 8 lanes:          {part:9.0f} msgs/s")
print(f"ratio partitioned / strict:              {part/strict:.2f}  (target >= 6)")
PY
