#!/usr/bin/env python3
"""Where a latency run's slowest answers came from, in time.

Reads a trace written by `API_TRACE=<path> cargo bench --bench api` (one line per request:
due time from the start in s, latency in ms, the client's lateness in ms), takes the requests at
or above the run's p99, and prints them grouped in 50 ms windows of due time, with each window's
worst latency and worst client lateness. A window whose client was late too is the machine's
stall; windows on whole seconds in every run point at something tallyd does once a second.

Usage: python3 benches/latency_clusters.py TRACE [MIN_SLOW]   (windows with at least MIN_SLOW
slow requests, default 1)
"""

import collections
import sys


def main() -> None:
    path = sys.argv[1]
    least = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rows = [tuple(map(float, line.split())) for line in open(path, encoding="utf-8")]
    latencies = sorted(row[1] for row in rows)
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"{len(rows)} requests; p50 {latencies[len(latencies) // 2]:.3f} ms, p99 {p99:.3f} ms")
    window = lambda row: int(row[0] * 20)  # noqa: E731 (50 ms)
    slow = collections.Counter(window(row) for row in rows if row[1] >= p99)
    by_window = collections.defaultdict(list)
    for row in rows:
        by_window[window(row)].append(row)
    for w, count in sorted(slow.items()):
        if count < least:
            continue
        here = by_window[w]
        print(
            f"{w / 20:6.2f} s  slow {count:4d}  max {max(r[1] for r in here):7.2f} ms"
            f"  client late max {max(r[2] for r in here):7.2f} ms"
        )


if __name__ == "__main__":
    main()
