#!/usr/bin/env bash
# CPU per 1,000-series history query, for A/B runs of two builds on a store the history bench
# kept (`HIST_KEEP=1 HIST_ONLY=query cargo bench --bench history` prints its directory).
#
#   benches/history_query_cpu.sh TALLYD DATA_DIR START END [QUERIES]
#
# Starts TALLYD on DATA_DIR (its history-bench.toml) pinned to CPU 1 at nice -19, asks
# `bench_load` averaged in 5-minute bins over [START, END) (unix seconds, multiples of 300 inside
# the kept day) twice untimed, then QUERIES (5) times under `perf stat -e task-clock`, and prints
# the CPU per query and the md5 of the answer (the same store must give the same bytes). A newer
# build may migrate the store at open: give each build its own copy, and let each compact once
# (start it, wait until idle) before comparing.
set -euo pipefail
tallyd=$(realpath "$1") dir=$2 start=$3 end=$4 queries=${5:-5}
[ -x "$tallyd" ] || { echo "$1: not an executable" >&2; exit 1; }
port=19097
cd "$dir"
taskset -c 1 nice -n -19 "$tallyd" --config history-bench.toml --data-dir . \
    --http-listen "127.0.0.1:$port" --udp-listen 127.0.0.1:0 >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 150); do
    curl -sf "127.0.0.1:$port/-/healthy" >/dev/null && break
    kill -0 $pid 2>/dev/null || { echo "$tallyd exited before it was healthy" >&2; exit 1; }
    sleep 0.2
done
url="127.0.0.1:$port/api/v1/observability/custom-metrics/bench_load/query?start=$start&end=$end&step=5m&aggregation=average"
curl -sf -o /dev/null "$url"
sum=$(curl -sf "$url" | md5sum | cut -d' ' -f1)
stat=$(mktemp)
perf stat -e task-clock -p "$pid" -o "$stat" &
perf_pid=$!
sleep 0.3
for _ in $(seq "$queries"); do curl -sf -o /dev/null "$url"; done
kill -INT $perf_pid
wait $perf_pid || true
ms=$(awk '/task-clock/ {gsub(",", "", $1); print $1}' "$stat")
rm -f "$stat"
echo "$(basename "$tallyd"): $(awk -v ms="$ms" -v n="$queries" 'BEGIN {printf "%.0f", ms / n}') ms CPU per query; answer md5 $sum"
