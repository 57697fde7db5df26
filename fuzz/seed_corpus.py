#!/usr/bin/env python3
"""Writes the seed files of fuzz/corpus/<target>/seed-*: real datagrams captured from the
`datadog` and `statsd` Python clients (when installed), hand-written lines of every grammar form
and tag style, and config/tallyd.toml with variants.

Usage (from the repository root):  python3 fuzz/seed_corpus.py
Idempotent: rewrites the seed-* files, leaves the fuzzer's own corpus files alone.
"""

import hashlib
import os
import pathlib
import socket
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

# Hand-written lines: every form of DESIGN.md §3 and the README table, and every refusal reason.
LINES = [
    # types, rates, gauges
    b"page.views:1|c",
    b"x:1|c|@0.1",
    b"x_total:1|c",
    b"g:5|g",
    b"g:+2|g",
    b"g:-1|g",
    b"g:-0|g",
    b"t:250|ms",
    b"t:250|ms|@0.25",
    b"h:3|h",
    b"d:3|d",
    b"s:alice|s",
    b"user:a:b|s",
    b"a:1:2:3|h",
    b"a:1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17:18|d",
    b"a.b-c:1|c",
    b"a--b..c:1|c",
    b"9lives:1|c",
    b"caf\xc3\xa9.latency:12.5|ms",
    # values
    b"v:.5|g",
    b"v:5.|g",
    b"v:1e3|h",
    b"v:1.5E-7|h",
    b"v:123456789012345|c",
    b"v:1234567890123456789|c",
    b"v:0.000000000000001|g",
    # Etsy multi-metric
    b"a:1|c:2|g",
    b"a:1|c|@0.5:2|g:3|ms",
    b"a:1|c:2|g|c:abc",
    # DogStatsD tags and fields
    b"x:1|c|#model:v1,region:eu",
    b"x:1|c|#url:http://a/b?c=d,k:v:w",
    b"x:1|c|#le:1,quantile:0.5,__name__:y",
    b"x:1|c|#a:1,a:2",
    b"x:1|c|#a.b:1,a_b:2",
    b"x:1|c|#\xe5\x90\x8d\xe5\x89\x8d:\xe5\x80\xa4,emoji:\xf0\x9f\x94\xa5",
    b'x:1|c|#path:C:\\dir\\"q",nl:a\\nb',
    b"x:1|c|#flag,k:,:v,,ok:1",
    b"x:1|c|c:abc123",
    b"x:1|c|#a:b|c:abc123",
    b"x:1|c|c:ci://container/abc",
    b"x:1|c|T1656581400|#a:b",
    b"x:1|c|#a:b|e:it-false,cn-x,pu-1|card:low",
    b"x:1|c|@0.5|#a:b|T1656581400|c:abc|e:ent|card:high",
    b"x:1|c|unknown|field||",
    # name-embedded tags
    b"x,k=v,k2=v2:1|c",
    b"x#k=v,k2=v2:1|c",
    b"x[k=v,k2=v2]:1|c",
    b"[k=v]x:1|c",
    b"x,k=v:1|c:2|g",
    b"x,flag,k=:1|c",
    # events and service checks
    b"_e{6,15}:deploy|model v2 is out|d:1656581400|h:host|p:normal|t:info|#model:v2",
    b"_sc|model.up|0|d:1656581400|h:host|#env:prod|m:All good",
    # refusals, one per reason
    b"x1|c",
    b":1|c",
    b"x:1",
    b"x:1|",
    b"x:1|zz",
    b"x:abc|c",
    b"x:|g",
    b"x:0x10|c",
    b"x:nan|g",
    b"x:-inf|g",
    b"x:1e400|g",
    b"x:-1|c",
    b"x\xff:1|c",
    b"x:1|c|#a:\xff",
    b"x:1|c|c:\xff",
    b"x,k=v:1|c|#a:b",
    b"x:1|c|#a:b|#c:d",
    b"my.[k=v]metric:1|c",
    b"x[k=v:1|c",
    b"x,k=[v]:1|c",
    b"x:1|c|c",
    b"x:1|c|c:",
    b"x:1|c|@2",
    b"x:1|c|@0",
    b"x:1|c|@abc",
    b"tallyd_x:1|c",
    b"process_open_fds:1|g",
    b"___:1|c",
]

DATAGRAMS = [
    b"a:1|c\nb:2|g\nc:3|ms\n",
    b"a:1|c\r\nb:2|g\r\n",
    b"a:1|c\r\r\n\n\nb:2|g",
    b"ok:1|c\nbad\nok:2|c\n_e{1,1}:a|b\n_sc|c|1\n",
    b"x:1|c\nx:1|g\nx_total:1|g\nx_total_total:1|c\n",
    b"h:1|h\nh_count:1|g\nh_bucket:2|c\n",
]

# Datagrams for ingest_render: a leading options byte (see fuzz_targets/ingest_render.rs), then
# NUL-separated datagrams.
INGEST = [
    b"\x00" + b"x:1|c\x00g:5|g\x00t:250|ms\x00s:a|s",
    b"\x03" + b"x:1|c|#a:b|c:abc\x00g:+2|g\x00g:-1|g\x00s:a|s\x00s:b|s\x00s:c|s",
    b"\x7f" + b"x:1|c|#le:1,a:\"q\"\\\x00x:2|c|#le:1,a:\"q\"\\\x00h:3|h|#a:b\x00h:1e22|h|#a:b",
    b"\x04" + b"x:1|c\x00x_total:2|c\x00y_total_total:1|c",
    b"\x08" + b"a:1|c\nb:1|c\nc:1|c\na:1|c\nb:1|c\x00d:1|d\x00e:1|c|#k:v,k:w",
    b"\x00" + b"x,k=v:1|c\x00x#k=v:2|c\x00x[k=v]:3|c\x00[k=v]x:4|c",
    b"\x01" + b"g:1e308|g\x00g:+1e308|g\x00g:+1e308|g\x00n:-1e308|g\x00n:-1e308|g",
    b"\x00" + b"c:1e308|c|@0.001\x00c:1|c",
]


def capture():
    """Runs both client scripts (and a buffered DogStatsD client) against a local socket."""
    try:
        import datadog  # noqa: F401
        import statsd  # noqa: F401
    except ImportError:
        print("seed_corpus: datadog/statsd not installed; no captured datagrams", file=sys.stderr)
        return []
    import subprocess

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    port = str(sock.getsockname()[1])
    for script in ["datadog_client.py", "statsd_client.py"]:
        subprocess.run(
            [sys.executable, str(ROOT / "tests" / "clients" / script), "127.0.0.1", port],
            check=True,
        )
    from datadog import DogStatsd

    client = DogStatsd(
        host="127.0.0.1",
        port=int(port),
        disable_telemetry=True,
        origin_detection_enabled=False,
        constant_tags=["env:prod", "team:ml"],
        max_buffer_len=4096,
    )
    client.increment("requests", sample_rate=1, tags=["route:/predict", "code:200"])
    client.decrement("inflight")
    client.gauge("temperature", -3.5, tags=["room:lab"])
    client.histogram("payload_bytes", 512, sample_rate=1)
    client.distribution("tokens", 0.25, tags=["model:gpt-4o"])
    client.timing("render", 40.5)
    client.set("users", "alice@example.com")
    client.gauge_with_timestamp("g", 1, timestamp=1656581400)
    client.event(
        "deploy|x",
        "line one\nline two",
        alert_type="warning",
        aggregation_key="k",
        source_type_name="src",
        date_happened=1656581400,
        priority="low",
        tags=["a:b"],
        hostname="host",
    )
    client.service_check("model.up", DogStatsd.WARNING, tags=["a:b"], hostname="h", message="m|n")
    client.flush()
    client.close_socket()

    got = []
    while True:
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            break
        got.append(data)
    return got


def write(target, blobs):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("seed-*"):
        old.unlink()
    for blob in blobs:
        name = "seed-" + hashlib.sha1(blob).hexdigest()[:16]
        (directory / name).write_bytes(blob)
    print(f"seed_corpus: {len(set(blobs))} seeds in {directory.relative_to(ROOT)}")


def configs():
    base = (ROOT / "config" / "tallyd.toml").read_text()
    return [
        base,
        "",
        "[udp]\nlisten = [\"127.0.0.1:8125\", \"[::1]:8125\"]\nspread = \"source\"\n",
        "[udp]\nreceivers = 4\nreceive_buffer_bytes = 0\nmax_datagram_bytes = 512\nbatch = 1024\n",
        "[http]\nlisten = \"[::]:9102\"\nheader_read_timeout_seconds = 0.001\n"
        "request_timeout_seconds = 86400\nidle_timeout_seconds = 1e-9\nmax_connections = 1\n"
        "max_concurrent_scrapes = 18446744073709551615\ngzip = false\n",
        "[statsd]\ngauge_deltas = false\ncontainer_id_label = false\n"
        "histogram_buckets = [-1e300, -0.5, 0, 1e-7, 0.1, 1, 1e21, 1.7976931348623157e308]\n"
        "set_window_seconds = 4294967295\nmax_set_members = 1\ncache_capacity = 1\n"
        "shards = 18446744073709551615\n",
        "[statsd]\nhistogram_buckets = [0.005, 5e-324, 123456.789, 1e6, 999999.9999999999]\n",
        "[exposition]\nstatsd_exporter_names = true\n[log]\nlevel = \"info,tallyd=debug\"\n",
        "[log]\nlevel = \"warn,tallyd::ingest[sample{name=x}]=trace\"\n",
        "statsd.histogram_buckets = [1, 2]\nudp = { batch = 8 }\n",
        "[http]\nidle_timeout_seconds = 0\n",
        "[statsd]\nhistogram_buckets = [1.0, 0.5]\n",
        "[statsd]\nhistogram_buckets = [inf]\n",
        "[udp]\nlisen = 1\n",
        "[udp]\nmax_datagram_bytes = 70000\n",
        "[log]\nlevel = \"info,[\"\n",
        "[http]\nrequest_timeout_seconds = nan\n",
        "[limits]\nmax_series = 1\nmax_series_per_metric = 1\nseries_ttl_seconds = 4294967295\n",
        "[[mapping]]\nmatch = \"predictor.*.latency\"\nname = \"predictor_latency_seconds\"\n"
        "labels = { model = \"$1\" }\n",
        "[[mapping]]\nmatch = \"debug.*\"\naction = \"drop\"\n",
        "[[mapping]]\nmatch = '^(?P<service>[a-z]+)\\.http\\.(\\d{3})$'\nmatch_type = \"regex\"\n"
        "name = \"http_responses\"\nlabels = { service = \"${service}\", code = \"$2\" }\n",
        "[[mapping]]\nmatch = \"jobs.*\"\nmatch_metric_type = \"gauge\"\nname = \"jobs_gauge\"\n\n"
        "[[mapping]]\nmatch = \"a.*.*\"\nname = \"a_$1\"\nhonor_labels = true\nscale = 0.001\n"
        "ttl_seconds = 1.5\nhelp = \"Mapped \\\"a\\\".\"\nbuckets = [1, 2]\n",
        "[[metric]]\nname = \"predictor_latency_seconds\"\ntype = \"histogram\"\n"
        "help = \"Time to answer one prediction.\"\nunit = \"seconds\"\n"
        "buckets = { linear = { start = 0.1, width = 0.1, count = 3 } }\n",
        "[[metric]]\nname = \"predictions_total\"\ntype = \"counter\"\nlabels = [\"model\"]\n"
        "help = \"back\\\\slash \\\"quoted\\\"\\nnewline\"\n\n"
        "[[metric]]\nname = \"queue_depth\"\ntype = \"gauge\"\nlabels = [\"queue\", \"region\"]\n"
        "ttl_seconds = 60\naggregation = \"last\"\n",
        "[[metric]]\nname = \"size_bytes\"\ntype = \"histogram\"\nunit = \"bytes\"\n"
        "buckets = { exponential = { start = 1, factor = 2, count = 20 } }\n",
    ]


def main():
    captured = capture()
    write("parse_datagram", captured + LINES + DATAGRAMS + [b"\n".join(LINES)])
    write("ingest_render", INGEST + [b"\x00" + d for d in captured] + [b"\x05" + b"\n".join(LINES)])
    write("config", [c.encode() for c in configs()])


if __name__ == "__main__":
    main()
