#!/usr/bin/env bash
# Recovery time after kill -9 with a large log: fills a queue to GB bytes
# (fsync = "never" for the fill only, pipelined 16 KiB messages), kills the
# broker with SIGKILL in the middle of more load, restarts it with the
# production setting (fsync = "always") and times, from spawn, (a) the
# "ready" line and (b) the first positive ACK of a new connection. Repeats
# kill -9 + restart and prints each and the medians.
#   usage: tools/bench-recovery.sh [GB] [restarts]
set -euo pipefail
cd "$(dirname "$0")/.."
gb=${1:-10}
restarts=${2:-5}
cargo build --release --bins >&2
bin=$(pwd)/target/release
work=$(pwd)/target/bench-recovery
rm -rf "$work" && mkdir -p "$work"
conf() { # fsync
  printf 'data_dir = "%s/data"\n[wal]\nfsync = "%s"\n[[listener]]\nname = "bench"\nlisten = "127.0.0.1:0"\nqueue = "bench"\n' "$work" "$1" > "$work/$1.toml"
}
conf never; conf always
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; }
trap cleanup EXIT

start() { # fsync -> sets pid, addr, t0 (spawn) and t1 (ready)
  t0=$(date +%s.%N)
  "$bin/orderly" serve --config "$work/$1.toml" > "$work/out" 2>> "$work/err" &
  pid=$!
  until grep -q ready "$work/out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "broker exited; see $work/err" >&2; exit 1; }
    sleep 0.005
  done
  t1=$(date +%s.%N)
  addr=$(sed -n 's/^orderly: listener bench on \([^ ]*\).*/\1/p' "$work/out")
}

echo "filling ${gb} GB ..." >&2
start never
per_conn=$(( gb * 1024 * 1024 / 16 / 32 ))
"$bin/orderly-load" --to "$addr" --connections 32 --window 16 --size 16384 --count "$per_conn" --json > "$work/fill.json"
du -sh "$work/data/queues/bench" >&2
for i in $(seq "$restarts"); do
  # Kill -9 under load, so the active segment ends in a batch being written.
  "$bin/orderly-load" --to "$addr" --connections 8 --window 8 --size 16384 --duration-s 3 --json > /dev/null 2>&1 &
  lp=$!
  sleep 1
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  wait "$lp" 2>/dev/null || true
  start always
  "$bin/orderly-load" --to "$addr" --connections 1 --count 1 --json > "$work/first.json"
  t2=$(date +%s.%N)
  python3 -c "import sys; t0,t1,t2=map(float,sys.argv[1:]); print(f'restart $i: ready {t1-t0:.3f} s, first ACK {t2-t0:.3f} s')" "$t0" "$t1" "$t2" | tee -a "$work/results.txt"
done
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
du -sh "$work/data/queues/bench"
python3 - "$work/results.txt" <<'PY'
import sys, re, statistics
rows = [tuple(map(float, re.findall(r"([0-9.]+) s", l))) for l in open(sys.argv[1])]
print(f"median over {len(rows)} restarts: ready {statistics.median(r[0] for r in rows):.3f} s, first ACK {statistics.median(r[1] for r in rows):.3f} s")
PY
