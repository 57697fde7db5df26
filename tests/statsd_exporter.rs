//! statsd_exporter's own parser tables, ported: every case of `TestLineToEvents`
//! (`pkg/line/line_test.go`) and of the packet table of `TestHandlePacket` (`bridge_test.go`), as
//! of statsd_exporter v0.2x–0.30. Each case holds the packet, the events statsd_exporter expects,
//! and what tallyd's real parser gives for it, read the way tallyd's ingester reads a sample (a
//! counter adds `value / rate`, a timer observes `value / 1000`, a sampled observation stands
//! for `round(1/rate)` of them, gauges ignore the rate) and named the way tallyd names it
//! (`naming::sanitize_name`, `naming::label_name_into`, whose escaping is statsd_exporter's).
//!
//! Where tallyd differs on purpose the case says so in a `// tallyd:` comment, and the README's
//! "Differences from statsd_exporter" lists it. The reasons tallyd reports (refusals, and the
//! warnings of lines it keeps) are part of every case.
//!
//! Go test cases without `out` expect no events, but `TestLineToEvents` only checks the events
//! that `out` lists, so for those the events here are what `pkg/line/line.go` gives (noted where
//! that is not "none").

use std::collections::BTreeMap;

use tallyd::naming::{label_name_into, sanitize_name};
use tallyd::protocol::{
    Extension, MetricType, ParseOptions, Reason, Sample, SampleSink, Value, parse_datagram,
};

// ---------------------------------------------------------------------------------------------
// Events, as statsd_exporter's `event.Events` hold them

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    /// `relative`: a `+`/`-` value that adds to the gauge.
    Gauge {
        relative: bool,
    },
    Observer,
}

#[derive(Clone, Debug, PartialEq)]
struct Event {
    kind: Kind,
    /// Sanitised as the exposition will write it.
    name: String,
    value: f64,
    labels: BTreeMap<String, String>,
}

type Tags<'a> = &'a [(&'a str, &'a str)];

const NO_TAGS: Tags = &[];
const TAG12: Tags = &[("tag1", "bar"), ("tag2", "baz")];

fn event(kind: Kind, name: &str, value: f64, tags: Tags) -> Event {
    Event {
        kind,
        name: sanitize_name(name),
        value,
        labels: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn c(name: &str, value: f64, tags: Tags) -> Vec<Event> {
    vec![event(Kind::Counter, name, value, tags)]
}

fn g(name: &str, value: f64, tags: Tags) -> Vec<Event> {
    vec![event(Kind::Gauge { relative: false }, name, value, tags)]
}

fn g_relative(name: &str, value: f64, tags: Tags) -> Vec<Event> {
    vec![event(Kind::Gauge { relative: true }, name, value, tags)]
}

/// `times` observer events of each value in turn (statsd_exporter replicates sampled ones).
fn o(name: &str, values: &[f64], times: usize, tags: Tags) -> Vec<Event> {
    values
        .iter()
        .flat_map(|&v| std::iter::repeat_n(event(Kind::Observer, name, v, tags), times))
        .collect()
}

/// The six values of statsd_exporter's extended-aggregation cases, as sent.
const PACKED: [f64; 6] = [0.5, 120.0, 3000.0, 10.0, 20000.0, 0.01];
/// The same, as an `ms` line gives them, in seconds.
const PACKED_SECONDS: [f64; 6] = [0.0005, 0.120, 3.0, 0.01, 20.0, 0.00001];

fn each(kind: Kind, name: &str, values: &[f64], tags: Tags) -> Vec<Event> {
    values.iter().map(|&v| event(kind, name, v, tags)).collect()
}

// ---------------------------------------------------------------------------------------------
// tallyd's side

/// Reads samples as the ingester does and records them as statsd_exporter's events.
#[derive(Default)]
struct Events {
    events: Vec<Event>,
    reasons: Vec<Reason>,
}

impl SampleSink for Events {
    fn sample(&mut self, sample: &Sample<'_>) {
        let mut labels = BTreeMap::new();
        for (key, value) in sample.tags.iter() {
            let mut label = String::new();
            label_name_into(key, &mut label);
            labels.insert(label, value.to_string());
        }
        if let Some(id) = sample.container_id {
            labels.insert("container_id".to_string(), id.to_string());
        }
        let weight = ((1.0 / sample.sample_rate).round() as usize).max(1);
        let (kind, value, times) = match (sample.metric_type, sample.value) {
            (MetricType::Counter, Value::Number(v)) => (Kind::Counter, v / sample.sample_rate, 1),
            (MetricType::Gauge, Value::Number(v)) => (Kind::Gauge { relative: false }, v, 1),
            (MetricType::Gauge, Value::GaugeDelta(v)) => (Kind::Gauge { relative: true }, v, 1),
            (MetricType::Timer, Value::Number(v)) => (Kind::Observer, v / 1000.0, weight),
            (MetricType::Histogram | MetricType::Distribution, Value::Number(v)) => {
                (Kind::Observer, v, weight)
            }
            other => panic!("no statsd_exporter event for {other:?}"),
        };
        let event = Event {
            kind,
            name: sanitize_name(&sample.name.to_string()),
            value,
            labels,
        };
        self.events.extend(std::iter::repeat_n(event, times));
    }

    fn reject(&mut self, reason: Reason) {
        self.reasons.push(reason);
    }

    fn extension(&mut self, kind: Extension) {
        panic!("no table case holds an extension: {kind:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

/// What tallyd gives for a case.
#[derive(Clone)]
enum Tallyd {
    /// statsd_exporter's events, with these reasons reported.
    Same(&'static [Reason]),
    /// Other events, on purpose (the case says why), with these reasons reported.
    Differs(Vec<Event>, &'static [Reason]),
}

use Tallyd::{Differs, Same};

#[derive(Clone)]
struct Case {
    /// The Go test case's name.
    go: &'static str,
    packet: &'static [u8],
    /// statsd_exporter's events.
    exporter: Vec<Event>,
    tallyd: Tallyd,
}

fn case(go: &'static str, packet: &'static [u8], exporter: Vec<Event>, tallyd: Tallyd) -> Case {
    Case {
        go,
        packet,
        exporter,
        tallyd,
    }
}

/// Runs every case and reports every mismatch at once.
fn check(table: &str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let mut got = Events::default();
        parse_datagram(case.packet, &ParseOptions::default(), &mut got);
        let (events, reasons) = match &case.tallyd {
            Same(reasons) => (&case.exporter, *reasons),
            Differs(events, reasons) => {
                if *events == case.exporter {
                    failures.push(format!(
                        "{table} {:?}: marked as a difference but tallyd's events are \
                         statsd_exporter's",
                        case.go
                    ));
                }
                (events, *reasons)
            }
        };
        if got.events != *events || got.reasons != reasons {
            failures.push(format!(
                "{table} {:?} ({:?}):\n  expected {events:?} {reasons:?}\n  got      {:?} {:?}",
                case.go,
                String::from_utf8_lossy(case.packet),
                got.events,
                got.reasons
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `pkg/line/line_test.go`, `TestLineToEvents`, in its order.
fn line_to_events() -> Vec<Case> {
    use Reason::*;
    vec![
        case("empty", b"", vec![], Same(&[])),
        case("simple counter", b"foo:2|c", c("foo", 2.0, NO_TAGS), Same(&[])),
        case("simple gauge", b"foo:3|g", g("foo", 3.0, NO_TAGS), Same(&[])),
        case("gauge with sampling", b"foo:3|g|@0.2", g("foo", 3.0, NO_TAGS), Same(&[])),
        case("gauge decrement", b"foo:-10|g", g_relative("foo", -10.0, NO_TAGS), Same(&[])),
        case("simple timer", b"foo:200|ms", o("foo", &[0.2], 1, NO_TAGS), Same(&[])),
        case("simple histogram", b"foo:200|h", o("foo", &[200.0], 1, NO_TAGS), Same(&[])),
        case("simple distribution", b"foo:200|d", o("foo", &[200.0], 1, NO_TAGS), Same(&[])),
        // tallyd: one observation of weight 5 rather than 5 copies (the same here, as read).
        case(
            "distribution with sampling",
            b"foo:0.01|d|@0.2|#tag1:bar,#tag2:baz",
            o("foo", &[0.01], 5, TAG12),
            Same(&[]),
        ),
        case(
            "librato tag extension",
            b"foo#tag1=bar,tag2=baz:100|c",
            c("foo", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "librato tag extension with tag keys unsupported by prometheus",
            b"foo#09digits=0,tag.with.dots=1:100|c",
            c("foo", 100.0, &[("_09digits", "0"), ("tag_with_dots", "1")]),
            Same(&[]),
        ),
        case(
            "influxdb tag extension",
            b"foo,tag1=bar,tag2=baz:100|c",
            c("foo", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "SignalFx tag extension",
            b"foo.[tag1=bar,tag2=baz]test:100|c",
            c("foo.test", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "SignalFx tag extension, tags at end of name",
            b"foo.test[tag1=bar,tag2=baz]:100|c",
            c("foo.test", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "SignalFx tag extension, tags at beginning of name",
            b"[tag1=bar,tag2=baz]foo.test:100|c",
            c("foo.test", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "SignalFx tag extension, no tags",
            b"foo.[]test:100|c",
            c("foo.test", 100.0, NO_TAGS),
            Same(&[]),
        ),
        case(
            "SignalFx tag extension, non-kv tags",
            b"foo.[tag1,tag2]test:100|c",
            c("foo.test", 100.0, NO_TAGS),
            Same(&[TagWithoutValue, TagWithoutValue]),
        ),
        case(
            "SignalFx tag extension, missing closing bracket",
            b"[tag1=bar,tag2=bazfoo.test:100|c",
            c("[tag1=bar,tag2=bazfoo.test", 100.0, NO_TAGS),
            Same(&[]),
        ),
        case(
            "SignalFx tag extension, missing opening bracket",
            b"tag1=bar,tag2=baz]foo.test:100|c",
            c("tag1=bar,tag2=baz]foo.test", 100.0, NO_TAGS),
            Same(&[]),
        ),
        case(
            "influxdb tag extension with tag keys unsupported by prometheus",
            b"foo,09digits=0,tag.with.dots=1:100|c",
            c("foo", 100.0, &[("_09digits", "0"), ("tag_with_dots", "1")]),
            Same(&[]),
        ),
        case(
            "datadog tag extension",
            b"foo:100|c|#tag1:bar,tag2:baz",
            c("foo", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "datadog tag extension with # in all keys (as sent by datadog php client)",
            b"foo:100|c|#tag1:bar,#tag2:baz",
            c("foo", 100.0, TAG12),
            Same(&[]),
        ),
        case(
            "datadog tag extension with tag keys unsupported by prometheus",
            b"foo:100|c|#09digits:0,tag.with.dots:1",
            c("foo", 100.0, &[("_09digits", "0"), ("tag_with_dots", "1")]),
            Same(&[]),
        ),
        case(
            "datadog tag extension with valueless tags: ignored",
            b"foo:100|c|#tag_without_a_value",
            c("foo", 100.0, NO_TAGS),
            Same(&[TagWithoutValue]),
        ),
        case(
            "datadog tag extension with valueless tags (edge case)",
            b"foo:100|c|#tag_without_a_value,tag:value",
            c("foo", 100.0, &[("tag", "value")]),
            Same(&[TagWithoutValue]),
        ),
        case(
            "datadog tag extension with empty tags (edge case)",
            b"foo:100|c|#tag:value,,",
            c("foo", 100.0, &[("tag", "value")]),
            Same(&[]),
        ),
        case(
            "datadog tag extension with sampling",
            b"foo:100|c|@0.1|#tag1:bar,#tag2:baz",
            c("foo", 1000.0, TAG12),
            Same(&[]),
        ),
        case(
            "librato/dogstatsd mixed tag styles without sampling",
            b"foo#tag1=foo,tag3=bing:100|c|#tag1:bar,#tag2:baz",
            vec![],
            Same(&[MalformedTags]),
        ),
        case(
            "signalfx/dogstatsd mixed tag styles without sampling",
            b"foo[tag1=foo,tag3=bing]:100|c|#tag1:bar,#tag2:baz",
            vec![],
            Same(&[MalformedTags]),
        ),
        case(
            "influxdb/dogstatsd mixed tag styles without sampling",
            b"foo,tag1=foo,tag3=bing:100|c|#tag1:bar,#tag2:baz",
            vec![],
            Same(&[MalformedTags]),
        ),
        case(
            "mixed tag styles with sampling",
            b"foo#tag1=foo,tag3=bing:100|c|@0.1|#tag1:bar,#tag2:baz",
            vec![],
            Same(&[MalformedTags]),
        ),
        case(
            "histogram with sampling",
            b"foo:0.01|h|@0.2|#tag1:bar,#tag2:baz",
            o("foo", &[0.01], 5, TAG12),
            Same(&[]),
        ),
        case(
            "datadog tag extension with multiple colons",
            b"foo:100|c|@0.1|#tag1:foo:bar",
            c("foo", 1000.0, &[("tag1", "foo:bar")]),
            Same(&[]),
        ),
        case(
            "datadog tag extension with invalid utf8 tag values",
            b"foo:100|c|@0.1|#tag:\xc3\x28invalid",
            vec![],
            Same(&[InvalidUtf8]),
        ),
        case(
            "datadog tag extension with both valid and invalid utf8 tag values",
            b"foo:100|c|@0.1|#tag1:valid,tag2:\xc3\x28invalid",
            vec![],
            Same(&[InvalidUtf8]),
        ),
        case(
            "datadog timings with extended aggregation values",
            b"foo_timing:0.5:120:3000:10:20000:0.01|ms|#tag1:bar,tag2:baz",
            o("foo_timing", &PACKED_SECONDS, 1, TAG12),
            Same(&[]),
        ),
        case(
            "datadog timings with extended aggregation values without tags",
            b"foo_timing:0.5:120:3000:10:20000:0.01|ms",
            o("foo_timing", &PACKED_SECONDS, 1, NO_TAGS),
            Same(&[]),
        ),
        case(
            "datadog timings with extended aggregation values and sampling but without tags",
            b"foo_timing:0.5:120:3000:10:20000:0.01|ms|@0.5",
            o("foo_timing", &PACKED_SECONDS, 2, NO_TAGS),
            Same(&[]),
        ),
        case(
            "datadog timings with extended aggregation values, sampling, and tags",
            b"foo_timing:0.5:120:3000:10:20000:0.01|ms|@0.5|#tag1:bar,tag2:baz",
            o("foo_timing", &PACKED_SECONDS, 2, TAG12),
            Same(&[]),
        ),
        case(
            "datadog histogram with extended aggregation values and tags",
            b"foo_histogram:0.5:120:3000:10:20000:0.01|h|#tag1:bar,tag2:baz",
            o("foo_histogram", &PACKED, 1, TAG12),
            Same(&[]),
        ),
        case(
            "datadog distribution with extended aggregation values",
            b"foo_distribution:0.5:120:3000:10:20000:0.01|d|#tag1:bar,tag2:baz",
            o("foo_distribution", &PACKED, 1, TAG12),
            Same(&[]),
        ),
        // tallyd: packed values for every type but `s` (statsd_exporter: only `ms`, `h`, `d`).
        case(
            "datadog counter with invalid extended aggregation values",
            b"foo_counter:0.5:120:3000:10:20000:0.01|c|#tag1:bar,tag2:baz",
            vec![],
            Differs(each(Kind::Counter, "foo_counter", &PACKED, TAG12), &[]),
        ),
        // tallyd: packed values for every type but `s`; each value sets the gauge in turn.
        case(
            "datadog gauge with invalid extended aggregation values",
            b"foo_gauge:0.5:120:3000:10:20000:0.01|g|#tag1:bar,tag2:baz",
            vec![],
            Differs(
                each(Kind::Gauge { relative: false }, "foo_gauge", &PACKED, TAG12),
                &[],
            ),
        ),
        // No `out` in Go (so nothing is checked there); line.go reads the SignalFX tags and the
        // packed timer values, and so does tallyd.
        case(
            "datadog timing with extended aggregation values and invalid signalfx tags",
            b"foo.[tag1=bar,tag2=baz]test:0.5:120:3000:10:20000:0.01|ms",
            o("foo.test", &PACKED_SECONDS, 1, TAG12),
            Same(&[]),
        ),
        // tallyd: packed counter values.
        case(
            "SignalFX counter with invalid Datadog style extended aggregation values",
            b"foo.[tag1=bar,tag2=baz]test:0.5:120:3000:10:20000:0.01|c",
            vec![],
            Differs(each(Kind::Counter, "foo.test", &PACKED, TAG12), &[]),
        ),
        // tallyd: packed counter values.
        case(
            "SignalFX no tags counter with invalid Datadog style extended aggregation values",
            b"foo.[]test:0.5:120:3000:10:20000:0.01|c",
            vec![],
            Differs(each(Kind::Counter, "foo.test", &PACKED, NO_TAGS), &[]),
        ),
        // No `out` in Go; line.go gives these events, as tallyd does.
        case(
            "SignalFX no tags with invalid Datadog style extended aggregation values and timings type",
            b"foo.[]test:0.5:120:3000:10:20000:0.01|ms",
            o("foo.test", &PACKED_SECONDS, 1, NO_TAGS),
            Same(&[]),
        ),
        // No `out` in Go; line.go gives these events, as tallyd does.
        case(
            "Influx no tags with invalid Datadog style extended aggregation values and timings type",
            b"foo.test:0.5:120:3000:10:20000:0.01|ms",
            o("foo.test", &PACKED_SECONDS, 1, NO_TAGS),
            Same(&[]),
        ),
        // The Go case sends `ms` despite its name; no `out`; line.go gives these events.
        case(
            "Influx no tags with invalid Datadog style extended aggregation values and histogram type",
            b"foo.test:0.5:120:3000:10:20000:0.01|ms",
            o("foo.test", &PACKED_SECONDS, 1, NO_TAGS),
            Same(&[]),
        ),
        // tallyd: one observation of weight 10.
        case(
            "timings with sampling factor",
            b"foo.timing:0.5|ms|@0.1",
            o("foo.timing", &[0.0005], 10, NO_TAGS),
            Same(&[]),
        ),
        case("bad line", b"foo", vec![], Same(&[MissingColon])),
        case("bad component", b"foo:1", vec![], Same(&[MissingType])),
        case("bad value", b"foo:1o|c", vec![], Same(&[InvalidValue])),
        // tallyd: kept with rate 1 like statsd_exporter, and counted.
        case(
            "illegal sampling factor",
            b"foo:1|c|@bar",
            c("foo", 1.0, NO_TAGS),
            Same(&[InvalidSampleRate]),
        ),
        // tallyd: kept with rate 1 like statsd_exporter, and counted (statsd_exporter does not
        // count a zero rate).
        case(
            "zero sampling factor",
            b"foo:2|c|@0",
            c("foo", 2.0, NO_TAGS),
            Same(&[InvalidSampleRate]),
        ),
        case("illegal stat type", b"foo:2|t", vec![], Same(&[UnknownType])),
        case("empty metric name", b":100|ms", vec![], Same(&[EmptyName])),
        case("empty component", b"foo:1|c|", vec![], Same(&[MissingType])),
        case("invalid utf8", b"invalid\xc3\x28utf8:1|c", vec![], Same(&[InvalidUtf8])),
        case(
            "ms timer with conversion to seconds",
            b"foo:200|ms",
            o("foo", &[0.2], 1, NO_TAGS),
            Same(&[]),
        ),
        case(
            "histogram with no unit conversion",
            b"foo:200|h",
            o("foo", &[200.0], 1, NO_TAGS),
            Same(&[]),
        ),
        case(
            "distribution with no unit conversion",
            b"foo:200|d",
            o("foo", &[200.0], 1, NO_TAGS),
            Same(&[]),
        ),
        case(
            "invalid event split over lines part 1",
            b"karafka.consumer.consume.cpu_idle_second:  0.111090  -0.055903  -0.195390 (  2.419002)",
            vec![],
            Same(&[MissingType]),
        ),
        case(
            "invalid event split over lines part 2",
            b"|h|#consumer:Kafka::SharedConfigurationConsumer,topic:shared_configuration_update,partition:1,consumer_group:tc_rc_us",
            vec![],
            Same(&[MissingColon]),
        ),
        case(
            "dogstatsd container ID extension",
            b"foo:100|c|#tag1:value|c:container123",
            c("foo", 100.0, &[("tag1", "value"), ("container_id", "container123")]),
            Same(&[]),
        ),
        case(
            "dogstatsd container ID with tags",
            b"foo:100|c|#tag1:bar,tag2:baz|c:container456",
            c(
                "foo",
                100.0,
                &[("tag1", "bar"), ("tag2", "baz"), ("container_id", "container456")],
            ),
            Same(&[]),
        ),
        case(
            "dogstatsd container ID with gauge",
            b"foo:50|g|#tag1:value|c:gauge_container",
            g("foo", 50.0, &[("tag1", "value"), ("container_id", "gauge_container")]),
            Same(&[]),
        ),
        case(
            "dogstatsd container ID with timer",
            b"foo:1000|ms|#tag1:value|c:timer_container",
            o("foo", &[1.0], 1, &[("tag1", "value"), ("container_id", "timer_container")]),
            Same(&[]),
        ),
        case(
            "dogstatsd container ID with histogram",
            b"foo:500|h|#tag1:value|c:hist_container",
            o("foo", &[500.0], 1, &[("tag1", "value"), ("container_id", "hist_container")]),
            Same(&[]),
        ),
        case(
            "dogstatsd container ID malformed - no colon",
            b"foo:100|c|#tag1:value|c",
            vec![],
            Same(&[EmptyContainerId]),
        ),
        case(
            "dogstatsd container ID malformed - no value after colon",
            b"foo:100|c|#tag1:value|c:",
            vec![],
            Same(&[EmptyContainerId]),
        ),
        case(
            "dogstatsd container ID with complex value",
            b"foo:100|c|#tag1:value|c:sha256:abcd1234efgh5678",
            c(
                "foo",
                100.0,
                &[("tag1", "value"), ("container_id", "sha256:abcd1234efgh5678")],
            ),
            Same(&[]),
        ),
    ]
}

/// `bridge_test.go`, `TestHandlePacket`, in its order: whole packets, several lines in some.
fn handle_packet() -> Vec<Case> {
    use Reason::*;
    // Most packets are single lines `TestLineToEvents` has too, with the same events: those
    // cases are taken from that table by name rather than written twice.
    let lines = line_to_events();
    let shared = |go: &str| -> Case {
        let case = lines.iter().find(|case| case.go == go);
        case.cloned()
            .unwrap_or_else(|| panic!("no TestLineToEvents case {go:?}"))
    };
    vec![
        shared("empty"),
        shared("simple counter"),
        shared("simple gauge"),
        shared("gauge with sampling"),
        shared("gauge decrement"),
        shared("simple timer"),
        shared("simple histogram"),
        shared("simple distribution"),
        // tallyd: one observation of weight 5.
        shared("distribution with sampling"),
        shared("librato tag extension"),
        shared("librato tag extension with tag keys unsupported by prometheus"),
        shared("influxdb tag extension"),
        shared("SignalFx tag extension"),
        shared("SignalFx tag extension, tags at end of name"),
        shared("SignalFx tag extension, tags at beginning of name"),
        shared("SignalFx tag extension, no tags"),
        shared("SignalFx tag extension, non-kv tags"),
        shared("SignalFx tag extension, missing closing bracket"),
        shared("SignalFx tag extension, missing opening bracket"),
        shared("influxdb tag extension with tag keys unsupported by prometheus"),
        shared("datadog tag extension"),
        shared("datadog tag extension with # in all keys (as sent by datadog php client)"),
        shared("datadog tag extension with tag keys unsupported by prometheus"),
        shared("datadog tag extension with valueless tags: ignored"),
        shared("datadog tag extension with valueless tags (edge case)"),
        shared("datadog tag extension with empty tags (edge case)"),
        shared("datadog tag extension with sampling"),
        shared("librato/dogstatsd mixed tag styles without sampling"),
        shared("signalfx/dogstatsd mixed tag styles without sampling"),
        shared("influxdb/dogstatsd mixed tag styles without sampling"),
        shared("mixed tag styles with sampling"),
        shared("histogram with sampling"),
        shared("datadog tag extension with multiple colons"),
        shared("datadog tag extension with invalid utf8 tag values"),
        shared("datadog tag extension with both valid and invalid utf8 tag values"),
        case(
            "multiple metrics with invalid datadog utf8 tag values",
            b"foo:200|c|#tag:value\nfoo:300|c|#tag:\xc3\x28invalid",
            c("foo", 200.0, &[("tag", "value")]),
            Same(&[InvalidUtf8]),
        ),
        case(
            "combined multiline metrics",
            b"foo:200|ms:300|ms:5|c|@0.1:6|g\nbar:1|c:5|ms",
            [
                o("foo", &[0.200, 0.300], 1, NO_TAGS),
                c("foo", 50.0, NO_TAGS),
                g("foo", 6.0, NO_TAGS),
                c("bar", 1.0, NO_TAGS),
                o("bar", &[0.005], 1, NO_TAGS),
            ]
            .concat(),
            Same(&[]),
        ),
        // tallyd: one observation of weight 10.
        shared("timings with sampling factor"),
        shared("bad line"),
        shared("bad component"),
        shared("bad value"),
        // tallyd: kept with rate 1 like statsd_exporter, and counted.
        shared("illegal sampling factor"),
        // tallyd: kept with rate 1 like statsd_exporter, and counted.
        shared("zero sampling factor"),
        shared("illegal stat type"),
        shared("empty metric name"),
        shared("empty component"),
        shared("invalid utf8"),
        case(
            "some invalid utf8",
            b"valid_utf8:1|c\ninvalid\xc3\x28utf8:1|c",
            c("valid_utf8", 1.0, NO_TAGS),
            Same(&[InvalidUtf8]),
        ),
        shared("ms timer with conversion to seconds"),
        shared("histogram with no unit conversion"),
        shared("distribution with no unit conversion"),
    ]
}

#[test]
fn line_to_events_table_gives_statsd_exporter_events_or_an_intended_difference() {
    check("TestLineToEvents", line_to_events());
}

#[test]
fn handle_packet_table_gives_statsd_exporter_events_or_an_intended_difference() {
    check("TestHandlePacket", handle_packet());
}

/// Every case of both tables is here (a removed case would make these fail).
#[test]
fn every_case_is_ported() {
    assert_eq!(line_to_events().len(), 72);
    assert_eq!(handle_packet().len(), 51);
}
