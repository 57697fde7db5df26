#!/usr/bin/env python3
"""Seldon custom metrics, end to end: a real `seldon-core` (PyPI, read against 1.18.2) model
whose `metrics()` returns COUNTER, GAUGE and TIMER metrics with tags, served in-process by the
package's own Flask microservice; its actual predict responses are POSTed to tallyd's
`/api/v1/seldon/metrics`, and `/metrics` is scraped for the series they must become.

Environment:
    TALLYD_URL          e.g. http://127.0.0.1:9102 (required unless --capture)
    TALLYD_TOKEN        bearer token with the `write` scope (optional: without tokens tallyd
                        answers on loopback only)
    TALLYD_TENANT       the token's tenant (optional; when set, sent as X-Tenant-ID and
                        required as the `tenant` label's value)
    TALLYD_SCRAPE_TOKEN bearer token for /metrics, if a scrape token is configured (optional)
    SELDON_FLOW_PREFIX  prefix of the metric keys (default "seldon_flow_")

    python3 seldon_flow.py                   # post and assert
    python3 seldon_flow.py --capture FILE    # only write the captured Seldon JSON to FILE

Expected series (issue 11): COUNTER `<key>_total` adds, GAUGE `<key>` is set (last value
wins), TIMER is a histogram `<key>` in seconds (value / 1000) with `_bucket`/`_sum`/`_count`;
the metric's tags are its labels, exactly, plus `tenant`. The tags are read from the JSON
actually posted, so they include the `method="predict"` tag the Seldon wrapper injects into
every metric that has tags (and not into those without). Series tagged with this run's `run`
id are checked absolutely; the untagged ones and the seed's example by their increase.

Prints "ok"/"FAIL" per check and closes with "N passed, N failed"; exits 1 on any failure.
"""

import json
import logging
import math
import os
import re
import sys
import urllib.error
import urllib.request
import uuid
from collections import defaultdict

# The wrapper only echoes metrics into the response when this is true (its default), and it
# reads it at import time (seldon_core/user_model.py).
os.environ["INCLUDE_METRICS_IN_CLIENT_RESPONSE"] = "true"

import numpy as np  # noqa: E402
from seldon_core import seldon_methods  # noqa: E402
from seldon_core.metrics import SeldonMetrics  # noqa: E402
from seldon_core.user_model import SeldonResponse  # noqa: E402
from seldon_core.utils import json_to_seldon_message, seldon_message_to_json  # noqa: E402
from seldon_core.wrapper import get_rest_microservice  # noqa: E402

logging.getLogger("seldon_core").setLevel(logging.ERROR)

PREFIX = os.environ.get("SELDON_FLOW_PREFIX", "seldon_flow_")
RUN = uuid.uuid4().hex[:12]

# The seed's example response, verbatim (003_efb66d67156990fe.txt).
SEED_RESPONSE = {
    "meta": {
        "metrics": [
            {"type": "COUNTER", "key": "mycounter", "value": 1.0, "tags": {"mytag": "mytagvalue"}},
            {"type": "GAUGE", "key": "mygauge", "value": 22.0},
            {"type": "TIMER", "key": "mytimer", "value": 1.0},
        ]
    },
    "data": {"ndarray": [[1, 2]]},
}

PASSED = 0
FAILED = 0


def check(ok, what, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"ok   - {what}")
    else:
        FAILED += 1
        print(f"FAIL - {what}" + (f"\n       {detail}" if detail else ""))
    return ok


# --- the Seldon side ---------------------------------------------------------------------------


class TokenModel:
    """A Seldon Python model: `predict` plus `metrics()`, whose tag keys vary from call to call
    (the case Seldon's own exporter cannot serve)."""

    def __init__(self):
        self.calls = 0

    def predict(self, X, features_names=None, meta=None):
        self.calls += 1
        out = np.asarray(X) * 2
        if self.calls == 3:  # runtime metrics ride on a SeldonResponse
            return SeldonResponse(out, metrics=[
                {"type": "COUNTER", "key": f"{PREFIX}retries", "value": 2,
                 "tags": {"run": RUN, "reason": "timeout"}}])
        return out

    def metrics(self):
        n = self.calls
        if n == 1:
            return [
                {"type": "COUNTER", "key": f"{PREFIX}requests", "value": 1.0,
                 "tags": {"run": RUN, "model": "gpt-4"}},
                {"type": "GAUGE", "key": f"{PREFIX}queue_depth", "value": 7.0,
                 "tags": {"run": RUN}},
                {"type": "TIMER", "key": f"{PREFIX}latency", "value": 120.5,
                 "tags": {"run": RUN, "model": "gpt-4"}},
            ]
        if n == 2:
            return [
                {"type": "COUNTER", "key": f"{PREFIX}requests", "value": 2.0,
                 "tags": {"run": RUN, "model": "gpt-4"}},
                {"type": "GAUGE", "key": f"{PREFIX}queue_depth", "value": 3.0,
                 "tags": {"run": RUN}},
                # one more tag key than call 1: Seldon's exporter throws on this
                {"type": "TIMER", "key": f"{PREFIX}latency", "value": 20.2,
                 "tags": {"run": RUN, "model": "gpt-4", "region": "eu"}},
            ]
        if n == 3:
            return [
                # a different tag key set again
                {"type": "COUNTER", "key": f"{PREFIX}requests", "value": 1.0,
                 "tags": {"run": RUN, "region": "us"}},
                {"type": "TIMER", "key": f"{PREFIX}latency", "value": 3500.0,
                 "tags": {"run": RUN, "model": "gpt-4"}},
                # untagged: Seldon adds no `method` tag to these
                {"type": "GAUGE", "key": f"{PREFIX}inflight", "value": float(int(RUN[:4], 16))},
                {"type": "TIMER", "key": f"{PREFIX}queue_wait", "value": 0.5},
            ]
        # integers, as in SeldonIO/seldon-core#4314's model
        return [
            {"type": "COUNTER", "key": f"{PREFIX}requests", "value": 1,
             "tags": {"run": RUN, "model": "gpt-4"}},
            {"type": "GAUGE", "key": f"{PREFIX}queue_depth", "value": 100, "tags": {"run": RUN}},
            {"type": "COUNTER", "key": f"{PREFIX}untagged", "value": 4},
        ]


def capture():
    """Real responses from the package's REST microservice (Flask test client), its gRPC path
    rendered as JSON, a combiner's answer to a SeldonMessageList, and Seldon's own /metrics."""
    seldon_metrics = SeldonMetrics()
    try:
        app = get_rest_microservice(TokenModel(), seldon_metrics)
        http = app.test_client()
        rest = []
        for request in ({"data": {"ndarray": [[1, 2]]}},
                        {"data": {"names": ["a", "b"], "ndarray": [[3, 4]]}},
                        {"data": {"tensor": {"shape": [1, 2], "values": [5.0, 6.0]}}},
                        {"data": {"ndarray": [[7, 8]]}}):
            answer = http.post("/api/v1.0/predictions", json=request)
            if answer.status_code != 200:
                raise RuntimeError(f"seldon microservice answered {answer.status_code}: "
                                   f"{answer.get_data(as_text=True)}")
            rest.append({"request": request, "status": answer.status_code,
                         "content_type": answer.headers.get("Content-Type"),
                         "body": answer.get_data(as_text=True)})

        # The gRPC path, as a gRPC client turns the SeldonMessage into JSON (MessageToJson):
        # proto3 leaves out the default enum value, so a COUNTER has no "type" at all.
        grpc_model = TokenModel()
        proto = seldon_methods.predict(grpc_model, json_to_seldon_message(
            {"data": {"ndarray": [[1, 2]]}}), seldon_metrics)
        grpc_json = seldon_message_to_json(proto)

        class Combiner:
            def aggregate(self, features_list, feature_names_list):
                return np.mean(np.asarray(features_list, dtype=float), axis=0)

            def metrics(self):
                return [{"type": "GAUGE", "key": f"{PREFIX}combined_inputs", "value": 2.0,
                         "tags": {"run": RUN}}]

        combiner_metrics = SeldonMetrics()
        try:
            combiner = get_rest_microservice(Combiner(), combiner_metrics).test_client()
            message_list = {"seldonMessages": [json.loads(rest[0]["body"]),
                                               json.loads(rest[1]["body"])]}
            agg = combiner.post("/aggregate", json=message_list)
            aggregate = {"request": message_list, "status": agg.status_code,
                         "body": agg.get_data(as_text=True)}
        finally:
            combiner_metrics._manager.shutdown()

        exposition, _ = seldon_metrics.generate_metrics()
    finally:
        seldon_metrics._manager.shutdown()
    return {"seldon_core_version": seldon_core_version(), "rest": rest, "grpc_json": grpc_json,
            "aggregate": aggregate, "seldon_own_metrics": exposition}


def seldon_core_version():
    from importlib.metadata import version
    return version("seldon-core")


# --- talking to tallyd -------------------------------------------------------------------------


def http(method, url, body=None, headers=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode()


def auth_headers(json_body=True):
    headers = {"Content-Type": "application/json"} if json_body else {}
    if os.environ.get("TALLYD_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['TALLYD_TOKEN']}"
    if os.environ.get("TALLYD_TENANT"):
        headers["X-Tenant-ID"] = os.environ["TALLYD_TENANT"]
    return headers


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def scrape(base):
    headers = {"Accept": "text/plain;version=0.0.4"}
    if os.environ.get("TALLYD_SCRAPE_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['TALLYD_SCRAPE_TOKEN']}"
    status, _, text = http("GET", f"{base}/metrics", headers=headers)
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}: {text[:300]}")
    samples, types = [], {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = {}
        for lm in LABEL.finditer(m.group(3) or ""):
            labels[lm.group(1)] = (lm.group(2).replace('\\"', '"').replace("\\n", "\n")
                                   .replace("\\\\", "\\"))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples, types


class Series:
    """Looks series up by name and labels (less `tenant`, and less `le` for buckets)."""

    def __init__(self, samples, tenant):
        self.samples, self.tenant = samples, tenant

    def find(self, name, tags, le=None):
        hits = []
        for n, labels, value in self.samples:
            if n != name:
                continue
            rest = {k: v for k, v in labels.items() if k not in ("tenant", "le")}
            if rest == tags and (le is None or labels.get("le") == le):
                hits.append((labels, value))
        return hits

    def value(self, name, tags, le=None):
        hits = self.find(name, tags, le)
        return hits[0][1] if len(hits) == 1 else None


def fold(metric_lists):
    """What tallyd must make of the posted metrics: {(kind, key, tags): value}."""
    counters, gauges, timers = defaultdict(float), {}, defaultdict(list)
    for metrics in metric_lists:
        for m in metrics:
            kind = m.get("type", "COUNTER")  # proto3 JSON drops the default enum value
            tags = tuple(sorted((m.get("tags") or {}).items()))
            if kind == "COUNTER":
                counters[(m["key"], tags)] += m["value"]
            elif kind == "GAUGE":
                gauges[(m["key"], tags)] = m["value"]
            elif kind == "TIMER":
                timers[(m["key"], tags)].append(m["value"] / 1000.0)
    return counters, gauges, timers


def close(a, b):
    return a is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def check_tenant(series, name, tags, want_tenant):
    hits = series.find(name, tags)
    tenants = {labels.get("tenant") for labels, _ in hits}
    ok = bool(hits) and None not in tenants and "" not in tenants and (
        want_tenant is None or tenants == {want_tenant})
    check(ok, f"{name}{dict(tags)} carries the tenant label",
          f"tenants seen: {tenants}, want {want_tenant or 'any non-empty'}")


def assert_series(before, after, counters, gauges, timers, tenant):
    def relative(tags):  # series not tagged with this run are compared by their increase
        return dict(tags).get("run") != RUN

    for (key, tags), total in counters.items():
        name, t = f"{key}_total", dict(tags)
        got = after.value(name, t)
        base = (before.value(name, t) or 0.0) if relative(tags) else 0.0
        check(got is not None and close(got - base, total),
              f"COUNTER {name}{t} {'rose by' if relative(tags) else '='} {total}",
              f"scraped {after.find(name, t)}, before {base}")
        check_tenant(after, name, t, tenant)
        check(after.types.get(name) == "counter" or after.types.get(key) == "counter",
              f"{name} is typed counter", f"TYPE lines: {after.types.get(name)!r}/{after.types.get(key)!r}")
    for (key, tags), value in gauges.items():
        t = dict(tags)
        check(close(after.value(key, t), value), f"GAUGE {key}{t} = {value}",
              f"scraped {after.find(key, t)}")
        check_tenant(after, key, t, tenant)
        check(after.types.get(key) == "gauge", f"{key} is typed gauge", repr(after.types.get(key)))
    for (key, tags), seconds in timers.items():
        t = dict(tags)
        rel = relative(tags)

        def delta(name, le=None):
            got = after.value(name, t, le)
            if got is None:
                return None
            return got - ((before.value(name, t, le) or 0.0) if rel else 0.0)

        check(close(delta(f"{key}_count", None), len(seconds)),
              f"TIMER {key}{t}: _count {'rose by' if rel else '='} {len(seconds)}",
              f"scraped {after.find(key + '_count', t)}")
        check(close(delta(f"{key}_sum", None), sum(seconds)),
              f"TIMER {key}{t}: _sum in seconds {'rose by' if rel else '='} {sum(seconds)}",
              f"scraped {after.find(key + '_sum', t)}")
        buckets = [(labels["le"], v) for labels, v in after.find(f"{key}_bucket", t)
                   if "le" in labels]
        finite = [le for le, _ in buckets if le != "+Inf"]
        check(any(le == "+Inf" for le, _ in buckets) and finite,
              f"TIMER {key}{t}: histogram buckets incl. +Inf", f"buckets {buckets}")
        wrong = []
        for le, _ in buckets:
            bound = math.inf if le == "+Inf" else float(le)
            want = sum(1 for s in seconds if s <= bound)
            got = delta(f"{key}_bucket", le)
            if not close(got, want):
                wrong.append((le, got, want))
        check(not wrong, f"TIMER {key}{t}: every bucket counts the observations <= le",
              f"(le, got, want): {wrong[:8]}")
        check_tenant(after, f"{key}_count", t, tenant)
        check(after.types.get(key) == "histogram", f"{key} is typed histogram",
              repr(after.types.get(key)))


class Scrape(Series):
    def __init__(self, base, tenant):
        samples, self.types = scrape(base)
        super().__init__(samples, tenant)


def post_metrics(base, what, body):
    status, ctype, text = http("POST", f"{base}/api/v1/seldon/metrics", body, auth_headers())
    try:
        answer = json.loads(text) if text else None
    except ValueError:
        answer = None
    check(200 <= status < 300 and answer is not None,
          f"POST {what}: 2xx with a JSON answer", f"{status} {ctype} {text[:400]}")
    if answer is not None:
        print(f"       answer: {json.dumps(answer)[:300]}")
    return answer


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--capture":
        captured = capture()
        with open(sys.argv[2], "w") as f:
            json.dump(captured, f, indent=2)
        for item in captured["rest"]:
            print(item["body"])
        print(json.dumps(captured["grpc_json"]))
        print(captured["aggregate"]["body"])
        return 0
    base = os.environ.get("TALLYD_URL", "").rstrip("/")
    if not base:
        sys.exit("seldon_flow: set TALLYD_URL (or use --capture FILE)")
    tenant = os.environ.get("TALLYD_TENANT")
    print(f"seldon_flow: {base} run={RUN} seldon-core {seldon_core_version()}")

    captured = capture()
    responses = [json.loads(item["body"]) for item in captured["rest"]]
    for i, response in enumerate(responses, 1):
        check(bool(response.get("meta", {}).get("metrics")),
              f"the microservice's response {i} carries meta.metrics", json.dumps(response)[:300])
    grpc_json = captured["grpc_json"]
    check(any("type" not in m for m in grpc_json["meta"]["metrics"]),
          "the gRPC-path JSON leaves COUNTER's type out (proto3 default)",
          json.dumps(grpc_json["meta"]["metrics"]))

    posts = [
        ("a whole SeldonMessage response", responses[0], [responses[0]["meta"]["metrics"]]),
        ("a SeldonMessageList", {"seldonMessages": [responses[1], responses[2]]},
         [responses[1]["meta"]["metrics"], responses[2]["meta"]["metrics"]]),
        ('{"metrics": [...]}', {"metrics": responses[3]["meta"]["metrics"]},
         [responses[3]["meta"]["metrics"]]),
        ("the gRPC-path JSON (COUNTER without type)", grpc_json, [grpc_json["meta"]["metrics"]]),
        ("the seed's example verbatim", SEED_RESPONSE, [SEED_RESPONSE["meta"]["metrics"]]),
    ]
    counters, gauges, timers = fold(lists for _, _, lists_ in posts for lists in lists_)

    try:
        before = Scrape(base, tenant)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        check(False, f"scrape {base}/metrics", str(exc))
        print(f"{PASSED} passed, {FAILED} failed")
        return 1
    for what, body, _ in posts:
        post_metrics(base, what, body)
    after = Scrape(base, tenant)
    assert_series(before, after, counters, gauges, timers, tenant)

    # Refusals and answers that say why.
    status, ctype, text = http("POST", f"{base}/api/v1/seldon/metrics", b"{not json",
                               auth_headers())
    check(status == 400 and ctype.startswith("application/problem+json"),
          "a body that is not JSON answers 400 problem+json", f"{status} {ctype} {text[:200]}")
    odd_key = f"{PREFIX}odd_{RUN}"
    status, ctype, text = http("POST", f"{base}/api/v1/seldon/metrics",
                               {"metrics": [{"type": "HISTOGRAM", "key": odd_key, "value": 1.0}]},
                               auth_headers())
    after_odd = Scrape(base, tenant)
    check(not any(odd_key in name for name, _, _ in after_odd.samples)
          and (status >= 400 or odd_key in text),
          "an unknown metric type is not served and the answer names it",
          f"{status} {text[:300]}")
    if os.environ.get("TALLYD_TOKEN"):
        status, ctype, _ = http("POST", f"{base}/api/v1/seldon/metrics", SEED_RESPONSE,
                                {"Content-Type": "application/json"})
        check(status == 401 and ctype.startswith("application/problem+json"),
              "no token answers 401 problem+json", f"{status} {ctype}")
        if tenant:
            headers = dict(auth_headers(), **{"X-Tenant-ID": tenant + "-other"})
            status, ctype, _ = http("POST", f"{base}/api/v1/seldon/metrics", SEED_RESPONSE,
                                    headers)
            check(status == 403, "an X-Tenant-ID other than the token's answers 403",
                  f"{status} {ctype}")
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
