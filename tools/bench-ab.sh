#!/usr/bin/env bash
# Same-run A/B of this tree against an earlier revision: the WAL benchmarks
# (criterion wal_append_fsync/1 and /256, each round beside its fio baseline)
# and ingest at 1 and 32 lockstep connections (the same load tool, this
# tree's, against each build's broker), in interleaved rounds on one disk.
# A regression shows as a lower "new" ratio than "old" beyond the spread.
#   usage: tools/bench-ab.sh OLD_REV [rounds] [seconds]   (needs fio)
set -euo pipefail
cd "$(dirname "$0")/.."
old_rev=${1:?usage: tools/bench-ab.sh OLD_REV [rounds] [seconds]}
rounds=${2:-3}
secs=${3:-8}
root=$(pwd)
work=$root/target/bench-ab
old_tree=$work/old-tree
mkdir -p "$work"
ulimit -n 8192

if [ ! -d "$old_tree" ]; then
  git worktree add --detach "$old_tree" "$old_rev" >&2
else
  git -C "$old_tree" checkout --detach -q "$old_rev"
fi
echo "building $old_rev and this tree ..." >&2
(cd "$old_tree" && CARGO_TARGET_DIR=$work/old-target cargo build --release --bins >&2 && CARGO_TARGET_DIR=$work/old-target cargo bench --bench wal --no-run >&2)
cargo build --release --bins >&2
cargo bench --bench wal --no-run >&2

fio_run() { # bs size -> json
  rm -rf "$work/fio" && mkdir -p "$work/fio"
  fio --name=b --directory="$work/fio" --rw=write --bs="$1" --fdatasync=1 --ioengine=sync \
      --size="$2" --runtime="$secs" --output-format=json 2>/dev/null
}

wal_bench() { # which(old|new) round
  local dir=$root target=$root/target
  if [ "$1" = old ]; then dir=$old_tree; target=$work/old-target; fi
  (cd "$dir" && CARGO_TARGET_DIR=$target cargo bench --bench wal -- --noplot 'wal_append_fsync/(1|256)$' >&2)
  mkdir -p "$work/r$2/$1"
  cp -r "$target/criterion/wal_append_fsync" "$work/r$2/$1/"
}

ingest() { # which round
  local bin=$root/target/release
  if [ "$1" = old ]; then bin=$work/old-target/release; fi
  local d=$work/ingest-$1
  rm -rf "$d" && mkdir -p "$d"
  printf 'data_dir = "%s/data"\n[[listener]]\nname = "bench"\nlisten = "127.0.0.1:0"\nqueue = "bench"\nmax_connections = 2048\n' "$d" > "$d/orderly.toml"
  "$bin/orderly" serve --config "$d/orderly.toml" > "$d/out" 2> "$d/err" &
  local pid=$!
  for _ in $(seq 100); do grep -q ready "$d/out" 2>/dev/null && break; sleep 0.1; done
  local addr
  addr=$(sed -n 's/^orderly: listener bench on \([^ ]*\).*/\1/p' "$d/out")
  "$root/target/release/orderly-load" --to "$addr" --connections 1 --duration-s "$secs" --json > "$work/r$2/$1.ingest1.json"
  "$root/target/release/orderly-load" --to "$addr" --connections 32 --duration-s "$secs" --json > "$work/r$2/$1.ingest32.json"
  kill "$pid"; wait "$pid" || true
}

for r in $(seq "$rounds"); do
  mkdir -p "$work/r$r"
  echo "round $r/$rounds: fio ..." >&2
  fio_run 1500 256m > "$work/r$r/fio1500.json"
  fio_run 384k 2g > "$work/r$r/fio384k.json"
  # Alternate which build goes first, so neither always gets the warmer disk.
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for which in $order; do
    echo "round $r/$rounds: $which WAL ..." >&2
    wal_bench "$which" "$r"
    echo "round $r/$rounds: $which ingest ..." >&2
    ingest "$which" "$r"
  done
done
rm -rf "$work/fio" "$work"/ingest-*

python3 - "$work" "$rounds" "$old_rev" <<'PY'
import json, sys, statistics
work, rounds, old_rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def fio(r, n):
    j = json.load(open(f"{work}/r{r}/{n}.json"))["jobs"][0]["write"]
    return j["iops"], j["bw_bytes"]
def crit(r, which, burst):
    p = f"{work}/r{r}/{which}/wal_append_fsync/{burst}/new/estimates.json"
    return json.load(open(p))["median"]["point_estimate"]  # ns per burst
def load(r, which, n):
    return json.load(open(f"{work}/r{r}/{which}.ingest{n}.json"))["msgs_per_s"]
rows = {k: [] for k in ["old_r1", "new_r1", "old_r256", "new_r256", "old_i1", "new_i1", "old_i32", "new_i32"]}
for r in range(1, rounds + 1):
    iops, _ = fio(r, "fio1500"); _, bw = fio(r, "fio384k")
    line = [f"round {r}: fio1500 {iops:.0f}/s fio384k {bw/1e6:.0f} MB/s"]
    for w in ["old", "new"]:
        one = 1e9 / crit(r, w, 1); b256 = 256e9 / crit(r, w, 256) * 1500
        i1, i32 = load(r, w, 1), load(r, w, 32)
        rows[f"{w}_r1"].append(one / iops); rows[f"{w}_r256"].append(b256 / bw)
        rows[f"{w}_i1"].append(i1); rows[f"{w}_i32"].append(i32)
        line.append(f"{w}: append1 {one:.0f}/s ({one/iops:.2f}) burst256 {b256/1e6:.0f} MB/s ({b256/bw:.2f}) ingest1 {i1:.0f} ingest32 {i32:.0f}")
    print(" | ".join(line))
m = lambda k: statistics.median(rows[k])
print(f"medians over {rounds} rounds ({old_rev} = old, this tree = new):")
print(f"  WAL single append / fio 1500 B:     old {m('old_r1'):.2f}  new {m('new_r1'):.2f}")
print(f"  WAL 256-burst / fio 384 KiB fresh:  old {m('old_r256'):.2f}  new {m('new_r256'):.2f}")
print(f"  ingest 1 connection msgs/s:         old {m('old_i1'):.0f}  new {m('new_i1'):.0f}  new/old {m('new_i1')/m('old_i1'):.2f}")
print(f"  ingest 32 connections msgs/s:       old {m('old_i32'):.0f}  new {m('new_i32'):.0f}  new/old {m('new_i32')/m('old_i32'):.2f}")
PY
