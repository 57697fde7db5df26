"""Sends a fixed set of metrics with the `datadog` package's DogStatsd client.

Usage: python3 datadog_client.py HOST PORT

tests/clients.rs runs this against a live tallyd and checks the scraped series; keep the two in
step. The client is configured to send exactly what the calls say: no buffering, no client
telemetry, no origin detection (which would add a container id from this process's cgroup).
"""

import sys

from datadog import DogStatsd


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    client = DogStatsd(
        host=host,
        port=port,
        disable_buffering=True,
        disable_telemetry=True,
        origin_detection_enabled=False,
    )
    client.increment("predictions", tags=["model:v1"])
    client.increment("predictions", tags=["model:v1"])
    client.increment("predictions", value=3, tags=["model:v2"])
    client.gauge("queue_depth", 42)
    client.histogram("latency_ms", 100)
    client.timing("infer", 250)
    client.distribution("tokens", 512)
    client.set("users", "alice")
    client.set("users", "bob")
    client.set("users", "alice")
    client.event("deploy", "model v2 is out", tags=["model:v2"])
    client.service_check("model.up", DogStatsd.OK)
    client.flush()
    client.close_socket()


if __name__ == "__main__":
    main()
