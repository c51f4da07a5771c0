#!/usr/bin/env bash
# End-to-end ingest benchmarks, all in one run on this machine:
#   fio 1500 B + fdatasync baseline, Orderly at 1 and 32 lockstep connections,
#   the same broker with fsync off at 32 (the ceiling without a disk),
#   Redis (XADD, appendonly with appendfsync always: durable before it
#   answers) at 1 and 32 with the same load tool and message shape, the
#   non-durable orderly-ackd at 1 and 32, CPU time per message of Orderly and
#   Redis, RSS with 1,000 idle connections and after 1 M messages.
#   Orderly and Redis runs alternate, round by round; each figure is the
#   median of $RUNS runs.
#   usage: tools/bench-ingest.sh [seconds-per-run] [runs]
#   (needs fio and redis-server: apt-get install fio redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
RUNS=${2:-3}
ulimit -n 8192
cargo build --release --bins >&2
bin=target/release
work=target/bench-ingest
rm -rf "$work" && mkdir -p "$work"
cat > "$work/orderly.toml" <<TOML
data_dir = "$work/data"
[[listener]]
name = "bench"
listen = "127.0.0.1:0"
queue = "bench"
max_connections = 2048
TOML

# The same broker with fsync switched off (UNSAFE, benchmarks only): what
# Orderly reaches with the disk taken out of the path, i.e. the ceiling no
# flush-path change can lift it above.
cat > "$work/orderly-nofsync.toml" <<TOML
data_dir = "$work/data-nofsync"
[[listener]]
name = "bench"
listen = "127.0.0.1:0"
queue = "bench"
max_connections = 2048
[wal]
fsync = "never"
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$bin/orderly" serve --config "$work/orderly.toml" > "$work/orderly.out" 2> "$work/orderly.err" &
opid=$!; pids+=($opid)
"$bin/orderly" serve --config "$work/orderly-nofsync.toml" > "$work/orderly-nofsync.out" 2> "$work/orderly-nofsync.err" &
npid=$!; pids+=($npid)
"$bin/orderly-ackd" --listen 127.0.0.1:0 > "$work/ackd.out" &
pids+=($!)
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/redis"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
  --appendfsync always --save "" --protected-mode yes > "$work/redis.out" 2>&1 &
rpid=$!; pids+=($rpid)
raddr=127.0.0.1:$rport
for _ in $(seq 100); do grep -q ready "$work/orderly.out" 2>/dev/null && grep -q ready "$work/orderly-nofsync.out" 2>/dev/null && grep -q listening "$work/ackd.out" 2>/dev/null && grep -q "Ready to accept" "$work/redis.out" 2>/dev/null && break; sleep 0.1; done
oaddr=$(sed -n 's/^orderly: listener bench on \([^ ]*\).*/\1/p' "$work/orderly.out")
naddr=$(sed -n 's/^orderly: listener bench on \([^ ]*\).*/\1/p' "$work/orderly-nofsync.out")
aaddr=$(sed -n 's/^orderly-ackd: listening on //p' "$work/ackd.out")

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
load() { "$bin/orderly-load" --to "$1" --connections "$2" --duration-s "$secs" --json ${3:+--protocol "$3"}; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# addr conns protocol pid -> JSON line with cpu_us_per_msg of that server
# "busy idle" jiffies of the whole host, from /proc/stat (idle includes iowait)
host_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
load_cpu() {
  local t0 t1 h0 h1 line
  t0=$(cpu_ticks "$4"); h0=$(host_ticks); line=$(load "$1" "$2" "$3"); h1=$(host_ticks); t1=$(cpu_ticks "$4")
  python3 -c 'import sys, json, os
r = json.loads(sys.argv[1]); hz = os.sysconf("SC_CLK_TCK")
r["cpu_us_per_msg"] = (int(sys.argv[3]) - int(sys.argv[2])) / hz * 1e6 / max(r["acked"], 1)
b0, i0 = map(int, sys.argv[4].split()); b1, i1 = map(int, sys.argv[5].split())
r["host_idle"] = (i1 - i0) / max((b1 - b0) + (i1 - i0), 1)
print(json.dumps(r))' "$line" "$t0" "$t1" "$h0" "$h1"
}
median_run() { # addr conns -> median JSON line by msgs_per_s
  for _ in $(seq "$RUNS"); do load "$1" "$2"; done | python3 -c '
import sys, json
rows = sorted((json.loads(l) for l in sys.stdin), key=lambda r: r["msgs_per_s"])
print(json.dumps(rows[len(rows)//2]))'
}
fio_iops() {
  mkdir -p "$work/fio"
  fio --name=b --directory="$work/fio" --rw=write --bs=1500 --fdatasync=1 --ioengine=sync \
      --size=256m --runtime="$secs" --time_based --output-format=json 2>/dev/null |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])'
}

# The write the issue suggests measuring: 4 KiB O_DIRECT | O_DSYNC into
# blocks already written (a laid-out file), i.e. one FUA write per commit.
fio_direct_iops() {
  mkdir -p "$work/fio"
  fio --name=lay --filename="$work/fio/direct" --size=256m --rw=write --bs=1m --ioengine=sync \
      --end_fsync=1 >/dev/null 2>&1
  fio --name=d --filename="$work/fio/direct" --rw=write --bs=4096 --direct=1 --sync=dsync \
      --ioengine=sync --size=256m --runtime="$secs" --time_based --output-format=json 2>/dev/null |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])'
}

echo "running (each figure: median of $RUNS x ${secs}s) ..." >&2
fio1=$(for _ in $(seq "$RUNS"); do fio_iops; done | sort -n | sed -n "$(( (RUNS+1)/2 ))p")
fiod=$(for _ in $(seq "$RUNS"); do fio_direct_iops; done | sort -n | sed -n "$(( (RUNS+1)/2 ))p")
rm -rf "$work/fio"
# Orderly and Redis alternate within each round, so drift in the host's
# disk or CPU hits both alike.
: > "$work/o1.jsonl"; : > "$work/r1.jsonl"; : > "$work/o32.jsonl"; : > "$work/r32.jsonl"; : > "$work/n32.jsonl"
: > "$work/ratios.txt"
for _ in $(seq "$RUNS"); do
  load_cpu "$oaddr" 1 mllp "$opid" >> "$work/o1.jsonl"
  load_cpu "$raddr" 1 redis "$rpid" >> "$work/r1.jsonl"
  load_cpu "$oaddr" 32 mllp "$opid" >> "$work/o32.jsonl"
  load_cpu "$raddr" 32 redis "$rpid" >> "$work/r32.jsonl"
  load_cpu "$naddr" 32 mllp "$npid" >> "$work/n32.jsonl"
  # The fsync-off broker leaves dirty pages; write them back now, outside
  # any timed run, rather than during the next round's Orderly run.
  sync
done
median_of() { python3 -c '
import sys, json
rows = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: r["msgs_per_s"])
print(json.dumps(rows[len(rows)//2]))' "$1"; }
o1=$(median_of "$work/o1.jsonl"); r1=$(median_of "$work/r1.jsonl")
o32=$(median_of "$work/o32.jsonl"); r32=$(median_of "$work/r32.jsonl"); n32=$(median_of "$work/n32.jsonl")
# Per-round ratios (each round's Orderly against the same round's Redis).
python3 - "$work" <<'PY'
import sys, json
w = sys.argv[1]
rows = lambda f: [json.loads(l) for l in open(f"{w}/{f}")]
o1, r1, o32, r32, n32 = (rows(f) for f in ["o1.jsonl", "r1.jsonl", "o32.jsonl", "r32.jsonl", "n32.jsonl"])
ratios = {"1 conn": [], "32 conn": [], "32 conn, fsync off (ceiling)": []}
for i in range(len(o1)):
    print(f"round {i+1}: 1 conn {o1[i]['msgs_per_s']:.0f} vs redis {r1[i]['msgs_per_s']:.0f} = {o1[i]['msgs_per_s']/r1[i]['msgs_per_s']:.2f};"
          f" 32 conn {o32[i]['msgs_per_s']:.0f} vs redis {r32[i]['msgs_per_s']:.0f} = {o32[i]['msgs_per_s']/r32[i]['msgs_per_s']:.2f};"
          f" fsync off {n32[i]['msgs_per_s']:.0f} = {n32[i]['msgs_per_s']/r32[i]['msgs_per_s']:.2f}")
    ratios["1 conn"].append(o1[i]['msgs_per_s'] / r1[i]['msgs_per_s'])
    ratios["32 conn"].append(o32[i]['msgs_per_s'] / r32[i]['msgs_per_s'])
    ratios["32 conn, fsync off (ceiling)"].append(n32[i]['msgs_per_s'] / r32[i]['msgs_per_s'])
# The headline ratios: each round's Orderly against the same round's Redis,
# then the median of those (the ratios below the per-figure medians mix rounds).
for name, rs in ratios.items():
    rs = sorted(rs)
    print(f"median of per-round ratios vs redis, {name}: {rs[len(rs)//2]:.2f}")
PY
a1=$(median_run "$aaddr" 1)
a32=$(median_run "$aaddr" 32)

# Memory: 1,000 idle connections held during a short run, then 1 M messages.
"$bin/orderly-load" --to "$oaddr" --connections 1 --idle 1000 --duration-s 4 --json > "$work/idle.json" &
lp=$!
for _ in $(seq 40); do sleep 0.1; done
rss_idle=$(rss_kb "$opid")
wait $lp
rss_before=$(rss_kb "$opid")
"$bin/orderly-load" --to "$oaddr" --connections 32 --count 31250 --json > "$work/million.json"
rss_after=$(rss_kb "$opid")

python3 - "$fio1" "$o1" "$o32" "$a1" "$a32" "$rss_idle" "$rss_before" "$rss_after" "$work/million.json" "$r1" "$r32" "$n32" "$fiod" <<'PY'
import sys, json
fio1 = float(sys.argv[1]); o1, o32, a1, a32 = (json.loads(x) for x in sys.argv[2:6])
rss_idle, rss_before, rss_after = (int(x) for x in sys.argv[6:9])
million = json.load(open(sys.argv[9]))
r1, r32, n32 = json.loads(sys.argv[10]), json.loads(sys.argv[11]), json.loads(sys.argv[12])
print(f"fio bs=1500 fdatasync=1:         {fio1:9.0f} writes/s")
print(f"fio bs=4k O_DIRECT|O_DSYNC:       {float(sys.argv[13]):9.0f} writes/s  (into written blocks; reference)")
for name, r in [("orderly 1 conn lockstep", o1), ("orderly 32 conn lockstep", o32), ("ackd (non-durable) 1 conn", a1), ("ackd (non-durable) 32 conn", a32)]:
    print(f"{name:32s} {r['msgs_per_s']:9.0f} msgs/s  p50={r['p50_us']}us p99={r['p99_us']}us p999={r['p999_us']}us  negative={r['negative']} mismatched={r['mismatched']}")
for name, r in [("redis XADD always 1 conn", r1), ("redis XADD always 32 conn", r32)]:
    print(f"{name:32s} {r['msgs_per_s']:9.0f} msgs/s  p50={r['p50_us']}us p99={r['p99_us']}us p999={r['p999_us']}us  errors={r['negative']}")
print(f"{'orderly 32 conn, fsync OFF':32s} {n32['msgs_per_s']:9.0f} msgs/s  p50={n32['p50_us']}us  (UNSAFE; the ceiling without a disk)")
for name, o, r in [("1 conn", o1, r1), ("32 conn", o32, r32)]:
    print(f"CPU per message {name:8s}          orderly {o['cpu_us_per_msg']:.1f} us, redis {r['cpu_us_per_msg']:.1f} us;"
          f" load tool {o['client_cpu_us_per_msg']:.1f} / {r['client_cpu_us_per_msg']:.1f} us; host idle {o['host_idle']:.0%} / {r['host_idle']:.0%}")
print(f"CPU per message 32 conn, fsync off orderly {n32['cpu_us_per_msg']:.1f} us; load tool {n32['client_cpu_us_per_msg']:.1f} us; host idle {n32['host_idle']:.0%}")
bound1 = 1e6 / (1e6 / fio1 + a1['p50_us'])
print(f"ratio 1 conn vs redis:            {o1['msgs_per_s']/r1['msgs_per_s']:.2f}  (target >= 1.3; ratio of the medians, see the per-round median above)")
print(f"ratio 1 conn vs bound:            {o1['msgs_per_s']/bound1:.2f}  (target >= 0.9; bound 1/(fio fdatasync latency + ackd p50) = {bound1:.0f}/s)")
print(f"ratio 32 conn vs redis:           {o32['msgs_per_s']/r32['msgs_per_s']:.2f}  (target >= 1.8; ratio of the medians, see the per-round median above)")
print(f"ceiling 32 conn vs redis:         {n32['msgs_per_s']/r32['msgs_per_s']:.2f}  (Orderly with fsync off: no flush path can do better)")
print(f"ratio 1 conn vs fio:              {o1['msgs_per_s']/fio1:.2f}  (target >= 0.85)")
# A lockstep message costs at least one fdatasync plus one loopback round trip
# through the same load tool (the non-durable server's p50 at 1 connection).
fsync_us = 1e6 / fio1
print(f"bound 1 conn (fsync/(fsync+RTT)):  {fsync_us/(fsync_us + a1['p50_us']):.2f}  (fsync {fsync_us:.0f} us, RTT p50 {a1['p50_us']} us; zero-cost hand-offs)")
print(f"bound 32 conn (32/(fsync+RTT)):    {32e6/(fsync_us + a32['p50_us'])/a32['msgs_per_s']:.2f} x ackd  (every client's message in the very next flush, flushes overlapping)")
print(f"ratio 32 conn vs ackd 32:         {o32['msgs_per_s']/a32['msgs_per_s']:.2f}  (target >= 0.8)")
print(f"RSS with 1,000 idle connections:  {rss_idle/1024:.1f} MiB")
print(f"RSS before / after 1 M messages:  {rss_before/1024:.1f} / {rss_after/1024:.1f} MiB  ({million['acked']} acked at {million['msgs_per_s']:.0f} msgs/s)")
PY
