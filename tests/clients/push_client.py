#!/usr/bin/env python3
"""A batch job pushing with the real `prometheus_client` (PyPI, read against 0.26.0), one action
per run, as `tests/push.rs` drives it against tallyd's Pushgateway-compatible routes.

    push_client.py GATEWAY ACTION [VALUE]

GATEWAY is host:port. Every push is to job "nightly/etl" (a `/`, so the client sends it as
`job@base64`) with the grouping key {"instance": "host/1", "stage": "eu west"} (base64 too: a
`/` or a space) and {"step": "load&check"} (percent-encoded by `quote_plus`). ACTION:

    push      push_to_gateway (PUT) a counter, a gauge, a histogram and a summary
    pushadd   pushadd_to_gateway (POST) only the gauge, set to VALUE
    counter   push_to_gateway only the counter, at VALUE
    add       push_to_gateway only the counter, at VALUE, with ?counters=add
    ttl       push_to_gateway only the gauge, with ?ttl=VALUE
    gzip      push_to_gateway only the gauge, set to VALUE, gzip-compressed
    auth      push_to_gateway only the gauge, set to VALUE, with basic_auth_handler
              (user TALLYD_TOKEN_ID, password TALLYD_TOKEN from the environment)
    delete    delete_from_gateway

A refused request raises (the client's handler raises on any status >= 400), so the exit status
says whether tallyd took the push.
"""

import os
import sys

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    delete_from_gateway,
    push_to_gateway,
    pushadd_to_gateway,
)
from prometheus_client.exposition import basic_auth_handler, default_handler

JOB = "nightly/etl"
GROUPING = {"instance": "host/1", "stage": "eu west", "step": "load&check"}


def counter(registry, value):
    rows = Counter("batch_rows", "Rows the job processed.", ["kind"], registry=registry)
    rows.labels("csv").inc(value)


def gauge(registry, value):
    last = Gauge("batch_last_success_unixtime", "Last success.", registry=registry)
    last.set(value)


def every_kind():
    registry = CollectorRegistry()
    counter(registry, 5)
    gauge(registry, 1700000000)
    duration = Histogram(
        "batch_duration_seconds", "Step duration.", buckets=[0.1, 1, 10], registry=registry
    )
    for seconds in [0.05, 0.5, 5, 50]:
        duration.observe(seconds)
    payload = Summary("batch_payload_bytes", "Payload size.", registry=registry)
    for size in [100, 300]:
        payload.observe(size)
    return registry


def with_query(query):
    """A handler that appends `query` to the URL the client built."""

    def handler(url, method, timeout, headers, data):
        return default_handler(f"{url}?{query}", method, timeout, headers, data)

    return handler


def main():
    gateway, action = sys.argv[1], sys.argv[2]
    value = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    registry = CollectorRegistry()
    if action == "push":
        push_to_gateway(gateway, job=JOB, registry=every_kind(), grouping_key=GROUPING)
    elif action == "pushadd":
        gauge(registry, value)
        pushadd_to_gateway(gateway, job=JOB, registry=registry, grouping_key=GROUPING)
    elif action == "counter":
        counter(registry, value)
        push_to_gateway(gateway, job=JOB, registry=registry, grouping_key=GROUPING)
    elif action == "add":
        counter(registry, value)
        push_to_gateway(
            gateway,
            job=JOB,
            registry=registry,
            grouping_key=GROUPING,
            handler=with_query("counters=add"),
        )
    elif action == "ttl":
        gauge(registry, 1)
        push_to_gateway(
            gateway,
            job=JOB,
            registry=registry,
            grouping_key=GROUPING,
            handler=with_query(f"ttl={int(value)}"),
        )
    elif action == "gzip":
        gauge(registry, value)
        push_to_gateway(
            gateway, job=JOB, registry=registry, grouping_key=GROUPING, compression="gzip"
        )
    elif action == "auth":
        gauge(registry, value)

        def auth(url, method, timeout, headers, data):
            return basic_auth_handler(
                url,
                method,
                timeout,
                headers,
                data,
                os.environ["TALLYD_TOKEN_ID"],
                os.environ["TALLYD_TOKEN"],
            )

        push_to_gateway(
            gateway, job=JOB, registry=registry, grouping_key=GROUPING, handler=auth
        )
    elif action == "delete":
        delete_from_gateway(gateway, job=JOB, grouping_key=GROUPING)
    else:
        sys.exit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
