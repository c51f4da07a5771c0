#!/usr/bin/env bash
# Runs the WAL benchmarks and their fio baselines in interleaved rounds on the
# same disk and prints per-round ratios and their medians (the machine is
# noisy: a baseline is only compared with the Orderly figure of its round).
#   usage: tools/bench-wal.sh [fio-seconds] [rounds]   (needs fio: apt-get install fio)
#
# Baselines, each the command the issue names plus the size fio requires:
#   fio --rw=write --bs=1500 --fdatasync=1 --ioengine=sync   (256 MiB file; never loops)
#   fio --rw=write --bs=384k --fdatasync=1                    one pass over a fresh
#        2 GiB file ("fresh"), fio's default layout (fallocated) - new blocks, as a log writes;
#   and, for reference, the same looping over a 256 MiB file with --time_based
#        ("overwrite"): after the first pass fio rewrites blocks it already wrote,
#        which no append-only log can do forever.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
work=target/bench-wal/fio
results=target/bench-wal/rounds
rm -rf "$work" "$results" && mkdir -p "$work" "$results"

fio_run() { # name bs size extra...
  local name=$1 bs=$2 size=$3; shift 3
  rm -rf "$work/files" && mkdir -p "$work/files"
  fio --name="$name" --directory="$work/files" --rw=write --bs="$bs" --fdatasync=1 --ioengine=sync \
      --size="$size" --runtime="$secs" "$@" --output-format=json 2>/dev/null
}
cargo bench --bench wal --no-run >&2
for r in $(seq "$rounds"); do
  echo "round $r/$rounds: fio 1500 B ..." >&2
  fio_run small 1500 256m > "$results/$r.small.json"
  echo "round $r/$rounds: fio 384 KiB fresh ..." >&2
  fio_run fresh 384k 2g > "$results/$r.fresh.json"
  echo "round $r/$rounds: fio 384 KiB overwrite ..." >&2
  fio_run overwrite 384k 256m --time_based > "$results/$r.overwrite.json"
  echo "round $r/$rounds: cargo bench --bench wal ..." >&2
  if [ "$r" = 1 ]; then filter=""; else filter="wal_append_fsync"; fi
  cargo bench --bench wal -- --noplot $filter >&2
  mkdir -p "$results/$r.criterion"
  cp -r target/criterion/wal_append_fsync target/criterion/wal_append_fsync_zero_filled "$results/$r.criterion/"
  [ "$r" = 1 ] && cp -r target/criterion/wal_read "$results/"
done
rm -rf "$work/files"

python3 - "$results" "$rounds" <<'PY'
import json, sys, os, statistics
res, rounds = sys.argv[1], int(sys.argv[2])
def fio(r, name):
    j = json.load(open(f"{res}/{r}.{name}.json"))["jobs"][0]["write"]
    return j["iops"], j["bw_bytes"]
def crit(path):
    return json.load(open(f"{path}/new/estimates.json"))["median"]["point_estimate"]  # ns/iter
rows = []
for r in range(1, rounds + 1):
    small, _ = fio(r, "small"); _, fresh = fio(r, "fresh"); _, over = fio(r, "overwrite")
    c = f"{res}/{r}.criterion/wal_append_fsync"
    one = 1e9 / crit(f"{c}/1"); b16 = 16e9 / crit(f"{c}/16"); b256 = 256e9 / crit(f"{c}/256")
    z256 = 256e9 / crit(f"{res}/{r}.criterion/wal_append_fsync_zero_filled/256")
    rows.append(dict(small=small, fresh=fresh/1e6, over=over/1e6, one=one, b16=b16,
                     b256=b256*1500/1e6, r1=one/small, rfresh=b256*1500/fresh, rover=b256*1500/over,
                     z256=z256*1500/1e6, rzover=z256*1500/over))
    x = rows[-1]
    print(f"round {r}: fio1500 {x['small']:.0f}/s  orderly1 {x['one']:.0f}/s  ratio {x['r1']:.2f} | "
          f"fio384k fresh {x['fresh']:.0f} MB/s overwrite {x['over']:.0f} MB/s  orderly256 {x['b256']:.0f} MB/s  "
          f"ratio fresh {x['rfresh']:.2f} overwrite {x['rover']:.2f} | zero-filled {x['z256']:.0f} MB/s ratio overwrite {x['rzover']:.2f}")
med = lambda k: statistics.median(x[k] for x in rows)
print(f"median fio bs=1500 fdatasync=1:          {med('small'):10.0f} writes/s")
print(f"median orderly append burst 1:           {med('one'):10.0f} records/s   ratio {med('r1'):.2f} (target >= 0.9)")
print(f"median orderly append burst 16:          {med('b16'):10.0f} records/s")
print(f"median fio bs=384k fdatasync=1 fresh:    {med('fresh'):10.0f} MB/s")
print(f"median fio bs=384k fdatasync=1 overwrite:{med('over'):10.0f} MB/s")
print(f"median orderly append burst 256:         {med('b256'):10.0f} MB/s   ratio vs fresh {med('rfresh'):.2f} (target >= 0.8), vs overwrite {med('rover'):.2f}")
print(f"median orderly 256 into zero-filled:     {med('z256'):10.0f} MB/s   ratio vs overwrite {med('rzover'):.2f}")
seq = crit(f"{res}/wal_read/sequential_zero_copy"); rnd = crit(f"{res}/wal_read/random_by_offset")
print(f"sequential read:                         {20000*1e9/seq:10.0f} records/s")
print(f"random read by offset:                   {1e9/rnd:10.0f} reads/s")
PY
