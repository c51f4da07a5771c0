#!/usr/bin/env bash
# Runs the WAL benchmarks and their fio baselines in one go, on the same disk,
# and prints the ratios docs/BENCHMARKS.md reports.
#   usage: tools/bench-wal.sh [fio-seconds]   (needs fio: apt-get install fio)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
work=target/bench-wal/fio
rm -rf "$work" && mkdir -p "$work"

fio_json() { # name bs
  fio --name="$1" --directory="$work" --rw=write --bs="$2" --fdatasync=1 --ioengine=sync \
      --size=256m --runtime="$secs" --time_based --output-format=json 2>/dev/null
}
echo "fio 1500 B/fdatasync ..." >&2
fio_json small 1500 > "$work/small.json"
echo "fio 384 KiB/fdatasync ..." >&2
fio_json large 384k > "$work/large.json"
echo "cargo bench --bench wal ..." >&2
cargo bench --bench wal -- --noplot >&2

python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
def fio(name):
    j = json.load(open(os.path.join(work, name + ".json")))["jobs"][0]["write"]
    return j["iops"], j["bw_bytes"]
def crit(group, bench):
    p = f"target/criterion/{group}/{bench}/new/estimates.json"
    return json.load(open(p))["median"]["point_estimate"]  # ns per iteration
small_iops, _ = fio("small")
_, large_bw = fio("large")
one = 1e9 / crit("wal_append_fsync", "1")
b16 = 16 * 1e9 / crit("wal_append_fsync", "16")
b256 = 256 * 1e9 / crit("wal_append_fsync", "256")
print(f"fio bs=1500 fdatasync=1:      {small_iops:10.0f} writes/s")
print(f"fio bs=384k fdatasync=1:      {large_bw/1e6:10.1f} MB/s")
print(f"orderly append burst 1:       {one:10.0f} records/s  ratio vs fio 1500: {one/small_iops:.2f} (target >= 0.9)")
print(f"orderly append burst 16:      {b16:10.0f} records/s")
print(f"orderly append burst 256:     {b256:10.0f} records/s = {b256*1500/1e6:.1f} MB/s  ratio vs fio 384k: {b256*1500/large_bw:.2f} (target >= 0.8)")
seq = crit("wal_read", "sequential_zero_copy")
rnd = crit("wal_read", "random_by_offset")
print(f"sequential read:              {20000*1e9/seq:10.0f} records/s")
print(f"random read by offset:        {1e9/rnd:10.0f} reads/s")
PY
