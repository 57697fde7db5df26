"""Sends a fixed set of metrics with the `statsd` package's StatsClient (Etsy StatsD flavour).

Usage: python3 statsd_client.py HOST PORT

tests/clients.rs runs this against a live tallyd and checks the scraped series; keep the two in
step. Each call is its own datagram, except inside the pipeline, which packs its calls into one.
"""

import sys

import statsd


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    client = statsd.StatsClient(host, port)
    client.incr("requests")
    client.incr("requests", 2)
    client.gauge("temperature", 21)
    client.timing("render", 40)
    client.set("visitors", "bob")
    # One datagram, applied in order: the gauge delta needs the absolute value before it.
    with client.pipeline() as pipe:
        pipe.incr("batch.jobs")
        pipe.incr("batch.jobs", 2)
        pipe.gauge("level", 5)
        pipe.gauge("level", -2, delta=True)
        pipe.timing("batch.step", 1500)


if __name__ == "__main__":
    main()
