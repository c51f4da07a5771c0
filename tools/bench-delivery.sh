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
#     Also: the share of acknowledged messages already delivered when the load
#     ended (the lane's committed offset at that moment / messages acknowledged).
#  2. Against a sink with 1 ms ACK latency: N queued messages drained by a strict
#     destination vs a partitioned one with 8 lanes (keyed on PID-3.1).
#  3. What a replay costs live delivery: two identical brokers, each with a strict
#     destination to its own fast sink; in one, a replay runs at the destination's
#     replay_rate_limit_per_s (default 100) throughout. Each drains $replay_n
#     queued messages, alternating (the order swapped in round 2), 3 times;
#     medians of the drain rates, and
#     their ratio. (The replaying broker's 100 msgs/s also run during the other's
#     drains: a fraction of a percent of the CPU, which if anything hides cost.)
#  usage: tools/bench-delivery.sh [seconds] [drain-messages] [replay-drain-messages]
#         (drain 0 skips part 2, replay-drain 0 skips part 3)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
drain=${2:-3000}
replay_n=${3:-20000}
[ -n "${ORDERLY_BIN_DIR:-}" ] || cargo build --release --bins >&2
bin=${ORDERLY_BIN_DIR:-target/release}
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
    # Live lanes only: the replay lane has its own line (`replay ... lag=`).
    status=$(grep '^  lane ' <<<"$status" || true)
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
at_end=$("$bin/orderly" ctl --config "$work/e2e/orderly.toml" status | sed -n 's/^  lane 0 committed=\([0-9]*\).*/\1/p')
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

live_alone=0 live_replaying=0
if [ "$replay_n" -gt 0 ]; then
  echo "3. drain $replay_n messages (fast sink), alone and while a replay runs at its rate limit" >&2
  live_drain() { # broker-name listener -> msgs/s of one drain of $replay_n messages
    local cfg="$work/$1/orderly.toml" t0 t1
    "$bin/orderly" ctl --config "$cfg" pause d > /dev/null
    "$bin/orderly-load" --to "$2" --connections 8 --count $((replay_n / 8)) --json > /dev/null
    t0=$(date +%s.%N)
    "$bin/orderly" ctl --config "$cfg" resume d > /dev/null
    t1=$(lag_zero_at "$1")
    python3 -c "print(($replay_n // 8 * 8) / ($t1 - $t0))"
  }
  median() { python3 -c "import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
  alone_addr=$(start_broker alone "$(dest d "$(start_ackd sinkalone 0)" "")")
  busy_addr=$(start_broker busy "$(dest d "$(start_ackd sinkbusy 0)" "")")
  # Something to replay: one drain's worth, then the replay of all of it
  # (at 100/s it outlasts the measurement).
  live_drain busy "$busy_addr" > /dev/null
  "$bin/orderly" ctl --config "$work/busy/orderly.toml" replay --destination d --since 1h --force --reason bench > /dev/null
  alone_rates=() busy_rates=()
  # Alternating which goes first, so neither always drains second.
  for round in 1 2 3; do
    if [ "$round" = 2 ]; then
      busy_rates+=("$(live_drain busy "$busy_addr")")
      alone_rates+=("$(live_drain alone "$alone_addr")")
    else
      alone_rates+=("$(live_drain alone "$alone_addr")")
      busy_rates+=("$(live_drain busy "$busy_addr")")
    fi
  done
  echo "drain rates alone: ${alone_rates[*]}; while replaying: ${busy_rates[*]}" >&2
  grep '^  replay' <<<"$("$bin/orderly" ctl --config "$work/busy/orderly.toml" status)" >&2
  live_alone=$(median "${alone_rates[@]}")
  live_replaying=$(median "${busy_rates[@]}")
fi

python3 - "$work" "$t0" "$t1" "$e2e_lat" "$strict_rate" "$part_rate" "$at_end" "$live_alone" "$live_replaying" <<'PY'
import sys, json
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lat = sys.argv[4].split()
strict, part = float(sys.argv[5]), float(sys.argv[6])
at_end = int(sys.argv[7] or 0)
alone, replaying = float(sys.argv[8]), float(sys.argv[9])
ingest_only = json.load(open(f"{work}/ingest-only.json"))
e2e = json.load(open(f"{work}/e2e-ingest.json"))
delivered = e2e["acked"] / (t1 - t0)
print(f"ingest-only (no destination), 32 conn:   {ingest_only['msgs_per_s']:9.0f} msgs/s")
print(f"ingest with one strict destination:      {e2e['msgs_per_s']:9.0f} msgs/s ({e2e['acked']} messages)")
print(f"delivered (all {e2e['acked']} delivered after {t1-t0:.2f} s): {delivered:9.0f} msgs/s")
print(f"ratio delivered / ingest-only:           {delivered/ingest_only['msgs_per_s']:.2f}  (target >= 0.8)")
print(f"end-to-end latency send→sink: p50={lat[1]}us p99={lat[2]}us over {lat[0]} messages")
print(f"delivered when the load ended: {at_end} of {e2e['acked']} = {at_end/e2e['acked']:.2f}  (target >= 0.9)")
print(f"ingest with destination / ingest-only:   {e2e['msgs_per_s']/ingest_only['msgs_per_s']:.2f}  (target >= 0.8)")
if alone > 0:
    print(f"live drain, medians of 3: alone {alone:9.0f} msgs/s; while a replay runs {replaying:9.0f} msgs/s; cost {1 - replaying/alone:+.1%}  (target < 10%)")
ceiling = json.load(open(f"{work}/ceiling.json"))["msgs_per_s"]
print(f"lockstep ceiling (bare 1-conn client under the same load): {ceiling:9.0f} msgs/s = {ceiling/ingest_only['msgs_per_s']:.2f} of ingest-only; delivered = {delivered/ceiling:.2f} of it")
if strict == 0: sys.exit(0)  # part 2 skipped
print(f"1 ms sink, strict:                       {strict:9.0f} msgs/s")
print(f"1 ms sink, partitioned 8 lanes:          {part:9.0f} msgs/s")
print(f"ratio partitioned / strict:              {part/strict:.2f}  (target >= 6)")
PY
