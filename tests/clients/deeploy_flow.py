#!/usr/bin/env python3
"""The Deeploy seed's "LLM token usage per day" flow, run with the real `deeploy` client
(PyPI `deeploy`, read against 1.66.0) against tallyd's Deeploy-compatible API.

Environment:
    TALLYD_URL              base URL of tallyd's API, e.g. http://127.0.0.1:8125 (required)
    DEEPLOY_ACCESS_KEY      token id, sent as the Basic-auth user name (required)
    DEEPLOY_SECRET_KEY      token secret, sent as the Basic-auth password (required)
    DEEPLOY_WORKSPACE_ID    workspace (= tallyd tenant) the key belongs to (required)
    DEEPLOY_DEPLOYMENT_ID   deployment id (optional; default a fresh uuid per run, so a run
                            never sees another run's metrics)
    DEEPLOY_TOKEN           a token secret for Bearer auth with read+write scopes (optional;
                            enables the deployment-token checks)
    DEEPLOY_FOREIGN_WORKSPACE_ID  a workspace that is NOT the key's tenant (optional; enables
                            the cross-tenant check)

The client hard-codes `https://api.{host}` (deeploy/services/deeploy_service.py, set_config) and
has no constructor argument for the scheme or a full base URL, so `point_client_at` replaces
only that one private attribute after construction; everything else is the client as shipped.

The seed fetches the deployment's request logs from Deeploy (`client.get_request_logs`); tallyd
does not keep request logs, so step 3 builds the same `RequestLog` objects the client would
return (validated with the client's own model) and the flow continues verbatim from there.

Chart-data contract asserted (issue 11): timeseries points binned in UTC, hourly when the
metric's points span <= 48 h and daily beyond; labels are the ISO 8601 bin starts, ascending;
bins without points are left out; `data[i]` is the bin's points folded by the metric's
aggregationMethod (default average); `predictionLogIds[i]` the ids of the bin's points;
`average` the mean of all the metric's points. Line/bar charts: one label per point, the x
value as sent, with its y value.

Prints "ok"/"FAIL" per check and closes with "N passed, N failed"; exits 1 on any failure.
"""

import json
import math
import os
import re
import sys
import traceback
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import requests
from pydantic import TypeAdapter

from deeploy import Client
from deeploy.enums import AggregationMethod, GraphType
from deeploy.models import (
    CreateCustomMetric,
    CreateCustomMetricDataPoint,
    CustomMetric,
    CustomMetricDataPoint,
    CustomMetricGraphData,
)
from deeploy.models.prediction_log import RequestLog

ISO_WITH_ZONE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")

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


def step(what, fn, *args):
    """Runs one step; an exception is a failed check, not the end of the run."""
    try:
        return fn(*args)
    except requests.exceptions.RequestException as exc:  # tallyd unreachable, reset, ...
        check(False, what, f"{type(exc).__name__}: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then we go on
        check(False, what, f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=-3))
        return None


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def env(name, required=True):
    value = os.environ.get(name)
    if required and not value:
        sys.exit(f"deeploy_flow: set {name}")
    return value


# --- pointing the real client at tallyd -------------------------------------------------------


def point_client_at(client, base_url):
    """Replaces the client's hard-coded `https://api.{host}` with `base_url` (nothing else)."""
    service = getattr(client, "_Client__deeploy_service", None)
    if service is None or not hasattr(service, "_DeeployService__host"):
        raise RuntimeError(
            "this deeploy version no longer keeps its base URL in "
            "Client.__deeploy_service.__host; re-read deeploy/services/deeploy_service.py")
    service._DeeployService__host = base_url.rstrip("/")
    return client


def make_client(base_url, workspace_id, **credentials):
    host = urlsplit(base_url).netloc  # only informative: the client would build https://api.<host>
    return point_client_at(Client(host=host, workspace_id=workspace_id, **credentials), base_url)


# --- expectations ------------------------------------------------------------------------------


def instant(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


FOLD = {
    "average": lambda v: sum(v) / len(v),
    "sum": sum,
    "min": min,
    "max": max,
}


def expected_bins(points, aggregation):
    """points: [(datetime, y, [ids])] -> (granularity, [(bin start, value, sorted ids)])."""
    times = [t for t, _, _ in points]
    hourly = max(times) - min(times) <= timedelta(hours=48)

    def start(t):
        t = t.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        return t if hourly else t.replace(hour=0)

    bins = defaultdict(list)
    for t, y, ids in points:
        bins[start(t)].append((y, ids))
    return ("hourly" if hourly else "daily"), [
        (key, FOLD[aggregation]([y for y, _ in members]), sorted(i for _, ids in members for i in ids))
        for key, members in sorted(bins.items())
    ]


def chart_entry(client, deployment_id, metric_id):
    charts = client.get_custom_metrics_with_chart_data(deployment_id)
    TypeAdapter(list[CustomMetricGraphData]).validate_python(charts)
    for entry in charts:
        if entry.get("id") == metric_id:
            return entry
    raise AssertionError(f"metric {metric_id} missing from customMetricsChartData: {charts}")


def check_timeseries_chart(what, entry, points, aggregation):
    granularity, bins = expected_bins(points, aggregation)
    labels, data = entry.get("labels"), entry.get("data")
    ids = entry.get("predictionLogIds")
    check(all(isinstance(l, str) and ISO_WITH_ZONE.match(l) for l in labels),
          f"{what}: labels are ISO 8601 with a zone", f"labels={labels}")
    got = [instant(l) for l in labels if isinstance(l, str) and ISO_WITH_ZONE.match(l)]
    want = [b for b, _, _ in bins]
    check(got == want, f"{what}: {granularity} bins at the expected starts",
          f"want {[w.isoformat() for w in want]}\n       got  {labels}")
    check(len(data) == len(bins) and all(close(d, v) for d, (_, v, _) in zip(data, bins)),
          f"{what}: bin values are the {aggregation} of each bin's points",
          f"want {[v for _, v, _ in bins]}\n       got  {data}")
    check(isinstance(ids, list) and len(ids) == len(bins)
          and all(sorted(i) == w for i, (_, _, w) in zip(ids, bins)),
          f"{what}: predictionLogIds per bin", f"want {[w for _, _, w in bins]}\n       got  {ids}")
    mean = sum(y for _, y, _ in points) / len(points)
    check(close(entry.get("average"), mean), f"{what}: average is the mean of all points",
          f"want {mean} got {entry.get('average')}")


def expect_client_error(what, fn, *args):
    """The client raises a plain Exception carrying the server's JSON body on a non-2xx answer;
    a JSONDecodeError here means the error answer had no JSON body."""
    try:
        fn(*args)
    except requests.exceptions.JSONDecodeError as exc:
        check(False, what, f"error answer had no JSON body: {exc}")
    except ValueError as exc:  # pydantic/client-side refusal: not what we are testing
        check(False, what, f"refused client-side, never reached tallyd: {exc}")
    except Exception as exc:  # noqa: BLE001 - the client's own failure type is Exception
        check(str(exc).startswith("Failed to"), what, f"unexpected exception: {exc!r}")
        print(f"       ({exc})")
    else:
        check(False, what, "tallyd accepted it")


def expect_problem(what, response, statuses=(400, 422)):
    ctype = response.headers.get("Content-Type", "")
    try:
        body = response.json()
    except ValueError:
        body = None
    check(response.status_code in statuses and ctype.startswith("application/problem+json")
          and isinstance(body, dict) and "code" in body,
          what, f"status {response.status_code} {ctype} {response.text[:300]}")


# --- the flow ----------------------------------------------------------------------------------


def main():
    base = env("TALLYD_URL").rstrip("/")
    access_key, secret_key = env("DEEPLOY_ACCESS_KEY"), env("DEEPLOY_SECRET_KEY")
    workspace_id = env("DEEPLOY_WORKSPACE_ID")
    deployment_id = env("DEEPLOY_DEPLOYMENT_ID", required=False) or str(uuid.uuid4())
    token = env("DEEPLOY_TOKEN", required=False)
    foreign = env("DEEPLOY_FOREIGN_WORKSPACE_ID", required=False)
    print(f"deeploy_flow: {base} workspace={workspace_id} deployment={deployment_id}")

    client = make_client(base, workspace_id, access_key=access_key, secret_key=secret_key)
    raw = requests.Session()
    raw.auth = (access_key, secret_key)
    prefix = f"{base}/workspaces/{workspace_id}/deployments/{deployment_id}"
    created = []

    try:
        run(client, raw, prefix, base, workspace_id, deployment_id, access_key, secret_key,
            token, foreign, created)
    finally:
        for metric_id in created:  # best effort, so a failed run leaves nothing behind
            try:
                client.delete_custom_metric(deployment_id, metric_id)
            except Exception:  # noqa: BLE001
                pass
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


def run(client, raw, prefix, base, workspace_id, deployment_id, access_key, secret_key, token,
        foreign, created):
    # --- 1. Create the custom metric (seed, verbatim) ---
    metric = step("create the timeseries metric", lambda: client.create_custom_metric(
        deployment_id,
        CreateCustomMetric(
            name='Token Usage',
            graph_type=GraphType.TIMESERIES,
            title_y_axis='Total tokens',
            aggregation_method=AggregationMethod.SUM
        ),
    ))
    if not isinstance(metric, dict):
        check(False, "create answered a JSON object", repr(metric))
        return
    created.append(metric.get("id"))
    parsed = step("create answer parses as deeploy.models.CustomMetric",
                  CustomMetric.model_validate, metric)
    if parsed is None:
        return
    check(parsed.name == "Token Usage" and parsed.graph_type is GraphType.TIMESERIES
          and parsed.aggregation_method is AggregationMethod.SUM
          and parsed.title_y_axis == "Total tokens" and parsed.title_x_axis is None
          and parsed.deployment_id == deployment_id and parsed.status.value == "active",
          "create answer echoes the definition", json.dumps(metric))

    # --- 2. Determine the time window: last 7 complete days (seed, verbatim) ---
    now = datetime.now(tz=timezone.utc)
    end_of_today = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    start_of_window = end_of_today - timedelta(days=7)

    # --- 3. The request logs the seed pages through with client.get_request_logs ---
    all_logs = synthetic_request_logs(deployment_id, start_of_window, now)

    # --- 4. Build one data point per request log (seed, plus the logs' prediction ids) ---
    data_points = []
    for log in all_logs:
        if log.raw_response_body is None:
            continue
        usage = log.raw_response_body.get('usage')
        if not usage:
            continue
        total_tokens = usage.get('total_tokens')
        if total_tokens is None:
            continue

        data_points.append(
            CreateCustomMetricDataPoint(
                x_value=log.created_at,
                y_value=float(total_tokens),
                prediction_log_ids=[p["id"] for p in log.prediction_logs or []],
            )
        )

    # --- 5. Submit the data points (seed, verbatim) ---
    answer = step("push the token data points", client.create_custom_metric_data_points,
                  deployment_id, metric['id'], data_points, 'UTC')
    print(f"Submitted {len(data_points)} data points to metric '{metric['name']}' ({metric['id']})")
    if answer is not None:
        points_answer = step("data-point answer parses as list[CustomMetricDataPoint]",
                             TypeAdapter(list[CustomMetricDataPoint]).validate_python, answer)
        if points_answer is not None:
            check(len(points_answer) == len(data_points)
                  and all(p.custom_metric_id == metric["id"] for p in points_answer)
                  and all(close(p.y_value, d.y_value) for p, d in zip(points_answer, data_points))
                  and all(instant(str(p.x_value)) == instant(d.x_value)
                          for p, d in zip(points_answer, data_points)),
                  "data-point answer: one per point, in order, same x instant and y",
                  json.dumps(answer)[:600])

    token_points = [(instant(d.x_value), d.y_value, d.prediction_log_ids or []) for d in data_points]
    span = max(t for t, _, _ in token_points) - min(t for t, _, _ in token_points)
    check(span > timedelta(hours=48), "the seed's 7-day window spans more than 48 h", str(span))

    listed = step("list custom metrics", client.get_custom_metrics, deployment_id)
    if listed is not None:
        step("list answer parses as list[CustomMetric]",
             TypeAdapter(list[CustomMetric]).validate_python, listed)
        check(any(m.get("id") == metric["id"] for m in listed), "the new metric is listed",
              json.dumps(listed)[:600])

    entry = step("fetch chart data", chart_entry, client, deployment_id, metric["id"])
    if entry is not None:
        check_timeseries_chart("Token Usage (sum)", entry, token_points, "sum")

    # Update: the client's signature says UpdateCustomMetric but it does UpdateCustomMetric(**options),
    # so only a dict works.
    updated = step("update name and aggregationMethod", client.update_custom_metric,
                   deployment_id, metric["id"],
                   {"name": "Token Usage (max)", "aggregation_method": AggregationMethod.MAX})
    if updated is not None:
        step("update answer parses as CustomMetric", CustomMetric.model_validate, updated)
        check(updated.get("name") == "Token Usage (max)" and updated.get("aggregationMethod") == "max"
              and updated.get("id") == metric["id"] and updated.get("graphType") == "timeseries"
              and updated.get("titleYAxis") == "Total tokens",
              "update answer carries the new name and aggregation, keeps the rest",
              json.dumps(updated))
        entry = step("fetch chart data after the update", chart_entry, client, deployment_id,
                     metric["id"])
        if entry is not None:
            check_timeseries_chart("Token Usage (max)", entry, token_points, "max")

    more_timeseries(client, deployment_id, now, created)
    line_and_bar(client, deployment_id, created)
    refusals(client, raw, prefix, deployment_id, metric["id"], created)
    auth_checks(base, workspace_id, deployment_id, access_key, token, raw, prefix, foreign)

    # Clear, then delete: a hard delete, gone from lists and charts, 404 (with JSON) afterwards.
    step("clear the data points", client.clear_custom_metric_data_points, deployment_id,
         metric["id"])
    entry = step("fetch chart data after clearing", chart_entry, client, deployment_id,
                 metric["id"])
    if entry is not None:
        check(entry.get("labels") == [] and entry.get("data") == [],
              "a cleared metric charts no bins", json.dumps(entry))
    for metric_id in list(created):
        step(f"delete {metric_id}", client.delete_custom_metric, deployment_id, metric_id)
    deleted = list(created)
    created.clear()
    listed = step("list after delete", client.get_custom_metrics, deployment_id)
    if listed is not None:
        check(not any(m.get("id") in deleted for m in listed), "deleted metrics are not listed",
              json.dumps(listed)[:600])
    charts = step("chart data after delete", client.get_custom_metrics_with_chart_data,
                  deployment_id)
    if charts is not None:
        check(not any(m.get("id") in deleted for m in charts), "deleted metrics have no chart",
              json.dumps(charts)[:600])
    expect_client_error("updating a deleted metric is refused", client.update_custom_metric,
                        deployment_id, metric["id"], {"name": "ghost"})
    expect_client_error("deleting it again is refused", client.delete_custom_metric,
                        deployment_id, metric["id"])
    expect_client_error("pushing to it is refused", client.create_custom_metric_data_points,
                        deployment_id, metric["id"],
                        [CreateCustomMetricDataPoint(x_value=now.isoformat(), y_value=1.0)])
    gone = raw.delete(f"{prefix}/customMetric/{metric['id']}")
    expect_problem("a deleted metric answers 404 as a problem document", gone, (404,))


def synthetic_request_logs(deployment_id, start_of_window, now):
    """The RequestLog objects client.get_request_logs(..., include_raw_body=True) returns: three
    LLM calls a day over the window (none in the future), one without a body and one without
    usage, which the seed's loop skips."""
    items = []
    for day in range(7):
        day_start = start_of_window + timedelta(days=day)
        for n, offset in enumerate((timedelta(hours=1, minutes=5), timedelta(hours=9, minutes=30),
                                    timedelta(hours=17, minutes=45, seconds=12))):
            at = day_start + offset
            if at > now - timedelta(minutes=2):
                continue
            total = 1000 + 137 * day + 41 * n
            body = {"id": f"chatcmpl-{day}{n}", "object": "chat.completion",
                    "usage": {"prompt_tokens": total // 3, "completion_tokens": total - total // 3,
                              "total_tokens": total}}
            if day == 2 and n == 1:
                body = None
            elif day == 4 and n == 0:
                body = {"id": "chatcmpl-nousage", "object": "chat.completion"}
            predictions = [{"id": str(uuid.uuid4())} for _ in range(1 + (n == 2))]
            items.append({
                "id": str(uuid.uuid4()), "deploymentId": deployment_id,
                "requestContentType": "application/json", "responseTimeMS": 812,
                "statusCode": 200,
                "createdAt": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "predictionLogs": predictions, "rawResponseBody": body,
            })
    return [RequestLog.model_validate(item) for item in items]


def more_timeseries(client, deployment_id, now, created):
    """Hourly bins (span <= 48 h) with the default aggregation, and the 48 h boundary."""
    latency = step("create a timeseries metric without aggregationMethod",
                   client.create_custom_metric, deployment_id,
                   {"name": "Latency", "graph_type": "timeseries", "title_y_axis": "ms"})
    if isinstance(latency, dict):
        created.append(latency.get("id"))
        check(latency.get("aggregationMethod") == "average",
              "aggregationMethod defaults to average", json.dumps(latency))
        top = now.replace(minute=0, second=0, microsecond=0)
        points, sent = [], []
        for hour in range(1, 7):
            for k, minute in enumerate((3, 27, 51)):
                at = top - timedelta(hours=hour) + timedelta(minutes=minute, seconds=k)
                y = 40.0 + 3 * hour + 7 * k
                ident = f"pl-{hour}-{k}"
                # mixed spellings of the zone; the client normalises them to +00:00 on the wire
                x = (at.astimezone(timezone(timedelta(hours=2))).isoformat() if k == 1
                     else at.isoformat().replace("+00:00", "Z"))
                sent.append(CreateCustomMetricDataPoint(x_value=x, y_value=y,
                                                        prediction_log_ids=[ident]))
                points.append((at, y, [ident]))
        if step("push hourly points", client.create_custom_metric_data_points, deployment_id,
                latency["id"], sent) is not None:
            entry = step("fetch hourly chart", chart_entry, client, deployment_id, latency["id"])
            if entry is not None:
                check_timeseries_chart("Latency (hourly, average)", entry, points, "average")

    base = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=72)
    for label, last in (("exactly 48 h", timedelta(hours=48)),
                        ("48 h + 1 s", timedelta(hours=48, seconds=1))):
        edge = step(f"create boundary metric ({label})", client.create_custom_metric,
                    deployment_id, {"name": f"Edge {label}", "graph_type": "timeseries",
                                    "title_y_axis": "n", "aggregation_method": "min"})
        if not isinstance(edge, dict):
            continue
        created.append(edge.get("id"))
        points = [(base + timedelta(minutes=10), 5.0, []), (base + timedelta(minutes=40), 3.0, []),
                  (base + timedelta(minutes=10) + last, 9.0, [])]
        sent = [CreateCustomMetricDataPoint(x_value=t.isoformat(), y_value=y) for t, y, _ in points]
        if step(f"push boundary points ({label})", client.create_custom_metric_data_points,
                deployment_id, edge["id"], sent) is not None:
            entry = step(f"fetch boundary chart ({label})", chart_entry, client, deployment_id,
                         edge["id"])
            if entry is not None:
                check_timeseries_chart(f"span {label}", entry, points, "min")


def line_and_bar(client, deployment_id, created):
    # The seed's line example; its date-like x values need timezone= with this client version
    # (models/custom_metric.py normalises every x that starts with YYYY-MM-DD, on any graph type).
    line = step("create the seed's line metric", client.create_custom_metric, deployment_id,
                CreateCustomMetric(name='Daily Token Usage', graph_type=GraphType.LINE,
                                   title_x_axis='Date', title_y_axis='Total tokens',
                                   unit_x_axis='day'))
    if isinstance(line, dict):
        created.append(line.get("id"))
        check(line.get("titleXAxis") == "Date" and line.get("unitXAxis") == "day"
              and line.get("graphType") == "line" and line.get("aggregationMethod") is None,
              "line metric answer: axis fields kept, no aggregationMethod", json.dumps(line))
        points = [CreateCustomMetricDataPoint(x_value='2026-03-06', y_value=312.4),
                  CreateCustomMetricDataPoint(x_value='2026-03-07', y_value=289.1),
                  CreateCustomMetricDataPoint(x_value='Total', y_value=601.5, prediction_log_ids=["p1"]),
                  CreateCustomMetricDataPoint(x_value=3, y_value=7.0)]
        wire = [p.to_request_body("UTC")["xValue"] for p in points]
        if step("push line points", client.create_custom_metric_data_points, deployment_id,
                line["id"], points, "UTC") is not None:
            entry = step("fetch line chart", chart_entry, client, deployment_id, line["id"])
            if entry is not None:
                got = sorted(zip(map(str, entry.get("labels", [])), entry.get("data", [])))
                want = sorted(zip(map(str, wire), (p.y_value for p in points)))
                check(len(got) == len(want) and all(
                    g[0] == w[0] and close(g[1], w[1]) for g, w in zip(got, want)),
                    "line chart: one label per point, the x value as sent, with its y",
                    f"want {want}\n       got  {got}")
                check(close(entry.get("average"), sum(p.y_value for p in points) / len(points)),
                      "line chart: average is the mean of the points", str(entry.get("average")))

    bar = step("create a bar metric with a baseline", client.create_custom_metric, deployment_id,
               {"name": "Cost per model", "graph_type": "bar", "title_x_axis": "Model",
                "title_y_axis": "EUR", "unit_y_axis": "EUR", "baseline_value": 12.5,
                "baseline_description": "budget per model!!!"})  # exactly 20 characters
    if isinstance(bar, dict):
        created.append(bar.get("id"))
        check(bar.get("baselineValue") == 12.5
              and bar.get("baselineDescription") == "budget per model!!!"
              and bar.get("unitYAxis") == "EUR", "bar metric answer keeps its baseline",
              json.dumps(bar))


def refusals(client, raw, prefix, deployment_id, timeseries_id, created):
    """Rules the client does not check itself, and rules it does, sent raw to bypass it."""
    before = {m.get("id") for m in client.get_custom_metrics(deployment_id)}
    chart_before = step("chart before the refused batch", chart_entry, client, deployment_id,
                        timeseries_id)
    expect_client_error("a timeseries x value that is not ISO 8601 is refused",
                        client.create_custom_metric_data_points, deployment_id, timeseries_id,
                        [CreateCustomMetricDataPoint(x_value="2026-03-06T10:00:00Z", y_value=9e9),
                         CreateCustomMetricDataPoint(x_value="Monday", y_value=1.0)])
    chart_after = step("chart after the refused batch", chart_entry, client, deployment_id,
                       timeseries_id)
    if chart_before is not None and chart_after is not None:
        check(chart_after.get("data") == chart_before.get("data")
              and chart_after.get("labels") == chart_before.get("labels"),
              "a refused batch stores none of its points (the client raises on any non-2xx)",
              f"before {chart_before.get('labels')} {chart_before.get('data')}\n"
              f"       after  {chart_after.get('labels')} {chart_after.get('data')}")
    expect_client_error("a 21-character baselineDescription is refused",
                        client.create_custom_metric, deployment_id,
                        {"name": "b", "graph_type": "bar", "title_x_axis": "x", "title_y_axis": "y",
                         "baseline_description": "x" * 21})
    expect_client_error("titleXAxis on a timeseries update is refused",
                        client.update_custom_metric, deployment_id, timeseries_id,
                        {"title_x_axis": "time"})
    timeseries = {"name": "t", "graphType": "timeseries", "titleYAxis": "y"}
    bar = {"name": "b", "graphType": "bar", "titleXAxis": "x", "titleYAxis": "y"}
    for what, body in (
            ("timeseries with titleXAxis", {**timeseries, "titleXAxis": "time"}),
            ("timeseries with unitXAxis", {**timeseries, "unitXAxis": "s"}),
            ("timeseries with a baseline", {**timeseries, "baselineValue": 3}),
            ("line without titleXAxis", {"name": "l", "graphType": "line", "titleYAxis": "y"}),
            ("bar with aggregationMethod", {**bar, "aggregationMethod": "sum"}),
            ("an unknown aggregationMethod", {**timeseries, "aggregationMethod": "median"}),
            ("an unknown graphType", {**bar, "graphType": "pie"})):
        expect_problem(f"{what} (raw) is refused", raw.post(f"{prefix}/customMetric", json=body))
    expect_problem("a timeseries x without a zone (raw) is refused",
                   raw.post(f"{prefix}/customMetric/{timeseries_id}/dataPoints",
                            json=[{"xValue": "2026-03-06T10:00:00", "yValue": 1.0}]))
    expect_problem("a data point without yValue (raw) is refused",
                   raw.post(f"{prefix}/customMetric/{timeseries_id}/dataPoints",
                            json=[{"xValue": "2026-03-06T10:00:00Z"}]))
    expect_problem("a body that is not JSON (raw) is refused",
                   raw.post(f"{prefix}/customMetric", data=b"{nope",
                            headers={"Content-Type": "application/json"}), (400, 415, 422))
    expect_problem("an unknown metric id answers 404",
                   raw.post(f"{prefix}/customMetric/{uuid.uuid4()}/dataPoints",
                            json=[{"xValue": "2026-03-06T10:00:00Z", "yValue": 1.0}]), (404,))
    # The refusals above must not have left anything behind.
    listed = step("list after refusals", client.get_custom_metrics, deployment_id)
    if listed is not None:
        strays = [m for m in listed if m.get("id") not in before]
        check(not strays, "refused creates left no metric behind", json.dumps(strays)[:600])


def auth_checks(base, workspace_id, deployment_id, access_key, token, raw, prefix, foreign):
    wrong = make_client(base, workspace_id, access_key=access_key, secret_key="not-the-secret")
    expect_client_error("a wrong secret key is refused (with a JSON body)",
                        wrong.create_custom_metric, deployment_id,
                        {"name": "x", "graph_type": "timeseries", "title_y_axis": "y"})
    expect_problem("no credentials answer 401", requests.get(f"{prefix}/customMetrics"), (401,))
    if token:
        bearer = make_client(base, workspace_id, deployment_token=token)
        listed = step("list with a Bearer token (deployment_token=)", bearer.get_custom_metrics,
                      deployment_id)
        check(isinstance(listed, list), "Bearer list answers a JSON array", repr(listed)[:300])
        try:  # the client itself refuses: create/update/delete are AuthType.BASIC only
            bearer.create_custom_metric(deployment_id, {"name": "x", "graph_type": "timeseries",
                                                        "title_y_axis": "y"})
            check(False, "token-only client cannot create (client-side rule)", "it sent it")
        except ValueError as exc:
            check("personal access key" in str(exc),
                  "token-only client cannot create (client-side rule)", str(exc))
    if foreign:
        other = make_client(base, foreign, access_key=access_key,
                            secret_key=raw.auth[1])
        expect_client_error("another workspace (tenant) is refused", other.get_custom_metrics_with_chart_data,
                            deployment_id)


if __name__ == "__main__":
    sys.exit(main())
