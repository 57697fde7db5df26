//! The wire grammar, one behaviour per test (DESIGN.md §3). Each test feeds a datagram or a line
//! to the public parser and looks at what a recording sink received, in order.

use proptest::prelude::*;
use tallyd::protocol::*;

// ---------------------------------------------------------------------------------------------
// A recording sink

/// An owned copy of a [`Sample`].
#[derive(Clone, Debug, PartialEq)]
struct Got {
    name: String,
    metric_type: MetricType,
    value: Owned,
    sample_rate: f64,
    tags: Vec<u8>,
    style: TagStyle,
    container_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Owned {
    Number(f64),
    GaugeDelta(f64),
    SetMember(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Sample(Got),
    Reject(Reason),
    Extension(Extension),
}

#[derive(Default, Debug)]
struct Recorder {
    seen: Vec<Seen>,
    /// How often `SampleSink::line` was called.
    lines: usize,
    /// `Tags::iter` of every sample, as owned pairs.
    pairs: Vec<Vec<(String, String)>>,
}

impl SampleSink for Recorder {
    fn line(&mut self) {
        self.lines += 1;
    }

    fn sample(&mut self, sample: &Sample<'_>) {
        self.pairs.push(
            sample
                .tags
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        self.seen.push(Seen::Sample(Got {
            name: sample.name.to_string(),
            metric_type: sample.metric_type,
            value: match sample.value {
                Value::Number(n) => Owned::Number(n),
                Value::GaugeDelta(n) => Owned::GaugeDelta(n),
                Value::SetMember(m) => Owned::SetMember(m.to_vec()),
            },
            sample_rate: sample.sample_rate,
            tags: sample.tags.raw.to_vec(),
            style: sample.tags.style,
            container_id: sample.container_id.map(str::to_owned),
        }));
    }

    fn reject(&mut self, reason: Reason) {
        self.seen.push(Seen::Reject(reason));
    }

    fn extension(&mut self, kind: Extension) {
        self.seen.push(Seen::Extension(kind));
    }
}

impl Recorder {
    fn samples(&self) -> Vec<&Got> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Sample(g) => Some(g),
                _ => None,
            })
            .collect()
    }

    fn rejects(&self) -> Vec<Reason> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Reject(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    fn extensions(&self) -> Vec<Extension> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Extension(e) => Some(*e),
                _ => None,
            })
            .collect()
    }

    /// The one sample, asserting there is exactly one and nothing was rejected.
    fn only(&self) -> &Got {
        assert_eq!(self.rejects(), [], "unexpected rejects: {:?}", self.seen);
        let samples = self.samples();
        assert_eq!(samples.len(), 1, "expected one sample: {:?}", self.seen);
        samples[0]
    }

    /// The one sample, whatever was rejected besides.
    fn only_sample(&self) -> &Got {
        let samples = self.samples();
        assert_eq!(samples.len(), 1, "expected one sample: {:?}", self.seen);
        samples[0]
    }

    fn values(&self) -> Vec<Owned> {
        self.samples().iter().map(|g| g.value.clone()).collect()
    }

    fn names(&self) -> Vec<&str> {
        self.samples().iter().map(|g| g.name.as_str()).collect()
    }
}

fn parse(datagram: impl AsRef<[u8]>) -> Recorder {
    parse_with(datagram, ParseOptions::default())
}

fn parse_with(datagram: impl AsRef<[u8]>, options: ParseOptions) -> Recorder {
    let mut recorder = Recorder::default();
    parse_datagram(datagram.as_ref(), &options, &mut recorder);
    recorder
}

/// Asserts the input is refused with exactly `reason` and nothing else happens.
#[track_caller]
fn assert_refused(datagram: impl AsRef<[u8]>, reason: Reason) {
    let datagram = datagram.as_ref();
    let got = parse(datagram);
    assert_eq!(
        got.seen,
        [Seen::Reject(reason)],
        "input {:?}",
        String::from_utf8_lossy(datagram)
    );
}

fn n(value: f64) -> Owned {
    Owned::Number(value)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Datagrams and lines

#[test]
fn counter_line_gives_one_sample() {
    let got = parse("page.views:1|c");
    assert_eq!(
        *got.only(),
        Got {
            name: "page.views".into(),
            metric_type: MetricType::Counter,
            value: n(1.0),
            sample_rate: 1.0,
            tags: vec![],
            style: TagStyle::None,
            container_id: None,
        }
    );
}

#[test]
fn every_non_empty_line_is_announced_once_whatever_its_fate() {
    let mut sink = Recorder::default();
    let datagram = b"a:1:2|c\n\nbad\n_e{1,1}:x|y\r\n_sc|s|0\nb:1|g\n";
    parse_datagram(datagram, &ParseOptions::default(), &mut sink);
    assert_eq!(sink.lines, 5);
}

#[test]
fn lines_are_separated_by_newline() {
    let got = parse("a:1|c\nb:2|g\nc:3|ms");
    assert_eq!(got.names(), ["a", "b", "c"]);
    assert_eq!(got.rejects(), []);
}

#[test]
fn trailing_newline_is_normal() {
    let got = parse("a:1|c\nb:2|c\n");
    assert_eq!(got.names(), ["a", "b"]);
    assert_eq!(got.rejects(), []);
}

#[test]
fn crlf_line_endings_are_stripped() {
    let got = parse("a:1|c\r\nb:2|c\r\n");
    assert_eq!(got.names(), ["a", "b"]);
    assert_eq!(got.rejects(), []);
}

#[test]
fn only_one_carriage_return_is_stripped() {
    assert_refused("a:1|c\r\r\n", Reason::UnknownType);
}

#[test]
fn empty_lines_are_skipped() {
    let got = parse("\n\na:1|c\n\n\r\nb:1|c\n\n");
    assert_eq!(got.names(), ["a", "b"]);
    assert_eq!(got.seen.len(), 2);
}

#[test]
fn empty_datagram_gives_nothing() {
    assert_eq!(parse("").seen, []);
    assert_eq!(parse("\n").seen, []);
}

#[test]
fn parse_line_reads_a_single_line() {
    let mut got = Recorder::default();
    parse_line(b"a:1|g", &ParseOptions::default(), &mut got);
    assert_eq!(got.only().metric_type, MetricType::Gauge);
}

#[test]
fn parse_line_ignores_an_empty_line() {
    let mut got = Recorder::default();
    parse_line(b"", &ParseOptions::default(), &mut got);
    assert_eq!(got.seen, []);
}

#[test]
fn invalid_line_does_not_spoil_neighbours() {
    let got = parse("a:1|c\nbad line\nb:2|c\nc:nan|g\nd:3|c\n");
    assert_eq!(got.names(), ["a", "b", "d"]);
    assert_eq!(
        got.rejects(),
        [Reason::MissingColon, Reason::NonFiniteValue]
    );
    assert_eq!(got.seen[1], Seen::Reject(Reason::MissingColon));
    assert_eq!(got.seen[3], Seen::Reject(Reason::NonFiniteValue));
}

#[test]
fn malformed_line_is_refused_with_exactly_one_reason() {
    // Several things wrong at once: still one reject.
    assert_refused(":nan|x|#flag|c:", Reason::EmptyName);
}

// ---------------------------------------------------------------------------------------------
// Extensions

#[test]
fn event_is_reported_as_extension() {
    let got = parse("_e{5,4}:title|text|d:1656581400|h:host|#env:prod");
    assert_eq!(got.seen, [Seen::Extension(Extension::Event)]);
}

#[test]
fn service_check_is_reported_as_extension() {
    let got = parse("_sc|my.check|0|d:1656581400|h:host|#env:prod|m:all good");
    assert_eq!(got.seen, [Seen::Extension(Extension::ServiceCheck)]);
}

#[test]
fn events_and_service_checks_do_not_spoil_neighbours() {
    let got = parse("a:1|c\n_e{1,1}:t|x\nb:1|c\n_sc|chk|2\nc:1|c\n");
    assert_eq!(got.names(), ["a", "b", "c"]);
    assert_eq!(
        got.extensions(),
        [Extension::Event, Extension::ServiceCheck]
    );
    assert_eq!(got.rejects(), []);
    assert!(matches!(got.seen[1], Seen::Extension(Extension::Event)));
    assert!(matches!(
        got.seen[3],
        Seen::Extension(Extension::ServiceCheck)
    ));
}

// ---------------------------------------------------------------------------------------------
// Types

#[test]
fn every_type_letter_is_read() {
    let got = parse("a:1|c\na:1|g\na:1|ms\na:1|h\na:1|d\na:x|s");
    let types: Vec<_> = got.samples().iter().map(|g| g.metric_type).collect();
    assert_eq!(
        types,
        [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Timer,
            MetricType::Histogram,
            MetricType::Distribution,
            MetricType::Set,
        ]
    );
    assert_eq!(got.rejects(), []);
}

#[test]
fn timer_value_is_passed_unchanged() {
    // Converting milliseconds to seconds is the registry's job.
    assert_eq!(parse("t:250|ms").only().value, n(250.0));
}

#[test]
fn unknown_type_is_refused() {
    assert_refused("a:1|x", Reason::UnknownType);
    assert_refused("a:1|msx", Reason::UnknownType);
    assert_refused("a:1|C", Reason::UnknownType);
}

#[test]
fn missing_type_is_refused() {
    assert_refused("a:1", Reason::MissingType);
    assert_refused("a:1|", Reason::MissingType);
    assert_refused("a:1||c", Reason::MissingType);
}

#[test]
fn missing_colon_is_refused() {
    assert_refused("a", Reason::MissingColon);
    assert_refused("a|c", Reason::MissingColon);
    // The only `:` sits in the tags: the name has no colon.
    assert_refused("a|c|#k:v", Reason::MissingColon);
}

#[test]
fn empty_name_is_refused() {
    assert_refused(":1|c", Reason::EmptyName);
}

// ---------------------------------------------------------------------------------------------
// Values

#[test]
fn decimal_forms_are_values() {
    let got = parse("a:1|ms\na:-1.5|ms\na:1e3|ms\na:.5|ms\na:5.|ms\na:1E-3|ms\na:+2|ms\na:0|ms");
    assert_eq!(
        got.values(),
        [
            n(1.0),
            n(-1.5),
            n(1000.0),
            n(0.5),
            n(5.0),
            n(0.001),
            n(2.0),
            n(0.0)
        ]
    );
    assert_eq!(got.rejects(), []);
}

#[test]
fn long_integer_value_is_exact() {
    assert_eq!(
        parse("a:12345678901234567890|h").only().value,
        n(12345678901234567890.0)
    );
}

#[test]
fn empty_value_is_refused() {
    assert_refused("a:|c", Reason::InvalidValue);
}

#[test]
fn hex_value_is_refused() {
    assert_refused("a:0x10|c", Reason::InvalidValue);
}

#[test]
fn junk_value_is_refused() {
    assert_refused("a:abc|c", Reason::InvalidValue);
    assert_refused("a:1_000|c", Reason::InvalidValue);
    assert_refused("a: 1|c", Reason::InvalidValue);
    assert_refused("a:1.2.3|g", Reason::InvalidValue);
    assert_refused("a:-|g", Reason::InvalidValue);
    assert_refused(b"a:\xff|g", Reason::InvalidValue);
}

#[test]
fn nan_value_is_refused() {
    assert_refused("a:nan|g", Reason::NonFiniteValue);
    assert_refused("a:NaN|h", Reason::NonFiniteValue);
}

#[test]
fn infinite_value_is_refused() {
    for line in [
        "a:inf|g",
        "a:+Inf|g",
        "a:-inf|h",
        "a:Infinity|ms",
        "a:INF|d",
    ] {
        assert_refused(line, Reason::NonFiniteValue);
    }
}

#[test]
fn overflowing_value_is_refused_as_non_finite() {
    assert_refused("a:1e400|h", Reason::NonFiniteValue);
}

#[test]
fn negative_counter_is_refused() {
    assert_refused("a:-1|c", Reason::NegativeCounter);
}

#[test]
fn negative_zero_counter_is_kept() {
    assert_eq!(parse("a:-0|c").only().value, n(0.0));
}

#[test]
fn signed_gauge_is_a_delta_by_default() {
    let got = parse("g:+3|g\ng:-2.5|g");
    assert_eq!(
        got.values(),
        [Owned::GaugeDelta(3.0), Owned::GaugeDelta(-2.5)]
    );
}

#[test]
fn signed_gauge_is_absolute_without_gauge_deltas() {
    let got = parse_with(
        "g:+3|g\ng:-2.5|g",
        ParseOptions {
            gauge_deltas: false,
        },
    );
    assert_eq!(got.values(), [n(3.0), n(-2.5)]);
}

#[test]
fn unsigned_gauge_is_absolute() {
    assert_eq!(parse("g:3|g").only().value, n(3.0));
}

#[test]
fn negative_histogram_value_is_kept() {
    assert_eq!(parse("h:-4|h").only().value, n(-4.0));
}

#[test]
fn set_value_is_a_verbatim_member() {
    assert_eq!(
        parse("users:alice|s").only().value,
        Owned::SetMember(b"alice".to_vec())
    );
}

#[test]
fn numeric_looking_set_member_is_not_parsed() {
    assert_eq!(
        parse("users:1.50|s").only().value,
        Owned::SetMember(b"1.50".to_vec())
    );
    assert_eq!(
        parse("users:nan|s").only().value,
        Owned::SetMember(b"nan".to_vec())
    );
}

#[test]
fn empty_set_member_is_refused() {
    assert_refused("users:|s", Reason::InvalidValue);
}

#[test]
fn non_utf8_set_member_is_kept() {
    assert_eq!(
        parse(b"users:\xff\xfe|s").only().value,
        Owned::SetMember(b"\xff\xfe".to_vec())
    );
}

// ---------------------------------------------------------------------------------------------
// Sample rates

#[test]
fn counter_with_sample_rate_keeps_rate() {
    assert_eq!(parse("a:1|c|@0.1").only().sample_rate, 0.1);
}

#[test]
fn sample_rate_of_one_is_valid() {
    assert_eq!(parse("a:1|c|@1").only().sample_rate, 1.0);
}

#[test]
fn sample_rate_above_one_is_counted_and_replaced_by_one() {
    let got = parse("a:1|c|@2");
    assert_eq!(got.rejects(), [Reason::InvalidSampleRate]);
    assert_eq!(got.samples()[0].sample_rate, 1.0);
    assert_eq!(got.samples().len(), 1);
}

#[test]
fn zero_or_negative_sample_rate_is_counted_and_replaced_by_one() {
    for line in ["a:1|c|@0", "a:1|c|@-0.5"] {
        let got = parse(line);
        assert_eq!(got.rejects(), [Reason::InvalidSampleRate], "{line}");
        assert_eq!(got.samples()[0].sample_rate, 1.0, "{line}");
    }
}

#[test]
fn sample_rate_that_is_not_a_number_is_counted_and_replaced_by_one() {
    for line in ["a:1|c|@", "a:1|c|@abc", "a:1|c|@nan", "a:1|c|@inf"] {
        let got = parse(line);
        assert_eq!(got.rejects(), [Reason::InvalidSampleRate], "{line}");
        assert_eq!(got.samples().len(), 1, "{line}");
        assert_eq!(got.samples()[0].sample_rate, 1.0, "{line}");
    }
}

#[test]
fn invalid_sample_rate_is_counted_once_for_packed_values() {
    let got = parse("a:1:2:3|h|@7");
    assert_eq!(got.rejects(), [Reason::InvalidSampleRate]);
    assert_eq!(got.samples().len(), 3);
}

#[test]
fn sample_rate_applies_to_timers_histograms_and_distributions() {
    let got = parse("a:1|ms|@0.25\nb:1|h|@0.5\nc:1|d|@0.125");
    let rates: Vec<f64> = got.samples().iter().map(|g| g.sample_rate).collect();
    assert_eq!(rates, [0.25, 0.5, 0.125]);
}

#[test]
fn fields_may_come_in_any_order() {
    let got = parse("a:1|c|#k:v|@0.5|c:abc");
    let sample = got.only();
    assert_eq!(sample.sample_rate, 0.5);
    assert_eq!(sample.tags, b"k:v");
    assert_eq!(sample.container_id.as_deref(), Some("abc"));
}

#[test]
fn last_sample_rate_wins() {
    assert_eq!(parse("a:1|c|@0.5|@0.25").only().sample_rate, 0.25);
}

// ---------------------------------------------------------------------------------------------
// Packed values

#[test]
fn packed_values_give_one_sample_each() {
    let got = parse("a:1:2:3|h");
    assert_eq!(got.values(), [n(1.0), n(2.0), n(3.0)]);
    assert_eq!(got.rejects(), []);
}

#[test]
fn packed_values_work_for_every_numeric_type() {
    for ty in ["c", "g", "ms", "h", "d"] {
        let got = parse(format!("a:1:2|{ty}"));
        assert_eq!(got.values(), [n(1.0), n(2.0)], "{ty}");
    }
}

#[test]
fn packed_values_share_rate_tags_and_container() {
    let got = parse("a:1:2|d|@0.5|#k:v|c:abc");
    assert_eq!(got.samples().len(), 2);
    for sample in got.samples() {
        assert_eq!(sample.sample_rate, 0.5);
        assert_eq!(sample.tags, b"k:v");
        assert_eq!(sample.container_id.as_deref(), Some("abc"));
    }
}

#[test]
fn packed_gauge_deltas_are_each_a_delta() {
    let got = parse("g:+1:-2:3|g");
    assert_eq!(
        got.values(),
        [Owned::GaugeDelta(1.0), Owned::GaugeDelta(-2.0), n(3.0)]
    );
}

#[test]
fn one_bad_packed_value_refuses_the_whole_line() {
    assert_refused("a:1:x:3|h", Reason::InvalidValue);
    assert_refused("a:1:nan:3|h", Reason::NonFiniteValue);
    assert_refused("a:1:-2:3|c", Reason::NegativeCounter);
}

#[test]
fn empty_packed_value_refuses_the_line() {
    assert_refused("a:1::3|h", Reason::InvalidValue);
    assert_refused("a:1:2:|h", Reason::InvalidValue);
}

#[test]
fn set_value_with_colons_is_one_member() {
    assert_eq!(
        parse("user:a:b|s").only().value,
        Owned::SetMember(b"a:b".to_vec())
    );
}

// ---------------------------------------------------------------------------------------------
// Etsy multi-metric lines

#[test]
fn etsy_multi_metric_line_gives_one_sample_per_type() {
    let got = parse("a:1|c:2|g");
    assert_eq!(got.rejects(), []);
    let samples = got.samples();
    assert_eq!(samples.len(), 2);
    assert_eq!(
        (
            samples[0].name.as_str(),
            samples[0].metric_type,
            &samples[0].value
        ),
        ("a", MetricType::Counter, &n(1.0))
    );
    assert_eq!(
        (
            samples[1].name.as_str(),
            samples[1].metric_type,
            &samples[1].value
        ),
        ("a", MetricType::Gauge, &n(2.0))
    );
}

#[test]
fn etsy_colon_after_a_rate_starts_the_next_sample() {
    let got = parse("a:1|c|@0.5:2|ms|@0.25:3|g");
    let samples = got.samples();
    let seen: Vec<_> = samples
        .iter()
        .map(|g| (g.metric_type, g.value.clone(), g.sample_rate))
        .collect();
    assert_eq!(
        seen,
        [
            (MetricType::Counter, n(1.0), 0.5),
            (MetricType::Timer, n(2.0), 0.25),
            (MetricType::Gauge, n(3.0), 1.0),
        ]
    );
}

#[test]
fn etsy_segments_may_hold_packed_values_and_sets() {
    let got = parse("a:1:2|h:x:y|s:3|c");
    assert_eq!(
        got.values(),
        [n(1.0), n(2.0), Owned::SetMember(b"x:y".to_vec()), n(3.0)]
    );
}

#[test]
fn etsy_segment_with_invalid_rate_counts_it_before_its_samples() {
    let got = parse("a:1|c:2|g|@5");
    assert_eq!(got.samples().len(), 2);
    assert!(matches!(got.seen[0], Seen::Sample(_)));
    assert_eq!(got.seen[1], Seen::Reject(Reason::InvalidSampleRate));
    assert!(matches!(got.seen[2], Seen::Sample(_)));
}

#[test]
fn bad_etsy_segment_refuses_the_whole_line() {
    assert_refused("a:1|c:x|g", Reason::InvalidValue);
    assert_refused("a:1|c:2|zz", Reason::UnknownType);
    assert_refused("a:1|c:2", Reason::MissingType);
}

#[test]
fn etsy_rule_is_off_in_a_line_with_dogstatsd_tags() {
    // Read as DogStatsD, the type is `c:2`.
    assert_refused("a:1|c:2|g|#k:v", Reason::UnknownType);
}

#[test]
fn etsy_rule_is_off_in_a_line_with_a_container_id() {
    assert_refused("a:1|c:2|g|c:abc", Reason::UnknownType);
}

#[test]
fn colon_after_a_rate_in_a_tagged_line_is_part_of_the_rate() {
    let got = parse("a:1|c|@0.5:2|g|#k:v");
    assert_eq!(got.rejects(), [Reason::InvalidSampleRate]);
    assert_eq!(got.samples().len(), 1);
    assert_eq!(got.samples()[0].tags, b"k:v");
}

#[test]
fn container_field_is_not_an_etsy_split() {
    let got = parse("a:1|g|c:abcdef");
    assert_eq!(got.only().container_id.as_deref(), Some("abcdef"));
}

#[test]
fn colon_after_another_field_is_not_an_etsy_split() {
    let got = parse("a:1|c|T1656581400:2|g");
    assert_eq!(got.only().value, n(1.0));
}

#[test]
fn tag_value_with_colon_is_not_an_etsy_split() {
    let got = parse("a:1|c|#url:http://x:80/y");
    assert_eq!(got.only().tags, b"url:http://x:80/y");
    assert_eq!(got.pairs[0], pairs(&[("url", "http://x:80/y")]));
}

// ---------------------------------------------------------------------------------------------
// DogStatsD tags

#[test]
fn dogstatsd_tags_are_kept_without_their_introducer() {
    let got = parse("a:1|c|#env:prod,service:web");
    let sample = got.only();
    assert_eq!(sample.tags, b"env:prod,service:web");
    assert_eq!(sample.style, TagStyle::DogStatsd);
    assert_eq!(got.pairs[0], pairs(&[("env", "prod"), ("service", "web")]));
}

#[test]
fn dogstatsd_tag_loses_one_leading_hash() {
    // The DogStatsD PHP client writes `#` before every tag; statsd_exporter drops it.
    let got = parse("a:1|c|#tag1:bar,#tag2:baz");
    assert_eq!(got.pairs[0], pairs(&[("tag1", "bar"), ("tag2", "baz")]));
    assert_eq!(got.rejects(), []);
    let got = parse("a:1|c|##k:v,##j:w");
    assert_eq!(got.pairs[0], pairs(&[("k", "v"), ("#j", "w")]));
}

#[test]
fn dogstatsd_tag_of_only_a_hash_key_is_counted_as_empty() {
    let got = parse("a:1|c|#k:v,#:x,#");
    assert_eq!(
        got.rejects(),
        [Reason::TagWithoutValue, Reason::EmptyTagValue]
    );
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
}

#[test]
fn name_tags_keep_a_leading_hash_in_the_key() {
    // Only DogStatsD tags lose it (statsd_exporter's `parseNameTags` keeps it).
    assert_eq!(parse("a,#k=v:1|c").pairs[0], pairs(&[("#k", "v")]));
}

#[test]
fn dogstatsd_tag_value_may_contain_colons() {
    let got = parse("a:1|c|#time:12:30:00");
    assert_eq!(got.pairs[0], pairs(&[("time", "12:30:00")]));
}

#[test]
fn valueless_tag_is_counted_and_line_kept() {
    let got = parse("a:1|c|#flag,env:prod");
    assert_eq!(got.rejects(), [Reason::TagWithoutValue]);
    assert_eq!(got.samples().len(), 1);
    assert_eq!(got.pairs[0], pairs(&[("env", "prod")]));
}

#[test]
fn each_valueless_tag_is_counted_once() {
    let got = parse("a:1:2|h|#one,two,k:v");
    assert_eq!(
        got.rejects(),
        [Reason::TagWithoutValue, Reason::TagWithoutValue]
    );
    assert_eq!(got.samples().len(), 2);
}

#[test]
fn empty_tag_value_is_counted_and_line_kept() {
    let got = parse("a:1|c|#env:,k:v");
    assert_eq!(got.rejects(), [Reason::EmptyTagValue]);
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
}

#[test]
fn empty_tag_key_is_counted_and_line_kept() {
    let got = parse("a:1|c|#:prod,k:v");
    assert_eq!(got.rejects(), [Reason::EmptyTagValue]);
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
}

#[test]
fn empty_tags_between_commas_are_skipped_silently() {
    let got = parse("a:1|c|#a:b,,c:d,");
    assert_eq!(got.pairs[0], pairs(&[("a", "b"), ("c", "d")]));
    assert_eq!(got.rejects(), []);
}

#[test]
fn empty_tag_section_means_no_tags() {
    let got = parse("a:1|c|#");
    assert_eq!(got.only().style, TagStyle::None);
}

#[test]
fn two_tag_sections_are_refused() {
    assert_refused("a:1|c|#a:b|#c:d", Reason::MalformedTags);
}

#[test]
fn invalid_utf8_in_tags_is_refused() {
    assert_refused(b"a:1|c|#k:\xff", Reason::InvalidUtf8);
}

#[test]
fn utf8_tags_are_kept() {
    let got = parse("a:1|c|#città:Zürich");
    assert_eq!(got.pairs[0], pairs(&[("città", "Zürich")]));
}

// ---------------------------------------------------------------------------------------------
// Name-embedded tags

#[test]
fn influx_tags_are_read_from_the_name() {
    let got = parse("req,env=prod,code=200:1|c");
    let sample = got.only();
    assert_eq!(sample.name, "req");
    assert_eq!(sample.tags, b"env=prod,code=200");
    assert_eq!(sample.style, TagStyle::Influx);
    assert_eq!(got.pairs[0], pairs(&[("env", "prod"), ("code", "200")]));
}

#[test]
fn librato_tags_are_read_from_the_name() {
    let got = parse("req#env=prod,code=200:1|c");
    let sample = got.only();
    assert_eq!(sample.name, "req");
    assert_eq!(sample.style, TagStyle::Librato);
    assert_eq!(got.pairs[0], pairs(&[("env", "prod"), ("code", "200")]));
}

#[test]
fn signalfx_tags_after_the_name_are_read() {
    let got = parse("req[env=prod,code=200]:1|c");
    let sample = got.only();
    assert_eq!(sample.name, "req");
    assert_eq!(sample.style, TagStyle::SignalFx);
    assert_eq!(sample.tags, b"env=prod,code=200");
    assert_eq!(got.pairs[0], pairs(&[("env", "prod"), ("code", "200")]));
}

#[test]
fn signalfx_tags_before_the_name_are_read() {
    let got = parse("[env=prod]req.count:1|c");
    let sample = got.only();
    assert_eq!(sample.name, "req.count");
    assert_eq!(got.pairs[0], pairs(&[("env", "prod")]));
}

// These were refused (`MalformedTags`) while a name had to be one borrowed `&str`; they follow
// statsd_exporter now: its `TestLineToEvents` cases "SignalFx tag extension", "…, no tags",
// "…, non-kv tags", "…, missing closing bracket" and "…, missing opening bracket"
// (tests/statsd_exporter.rs).

#[test]
fn signalfx_tags_inside_the_name_are_read() {
    let got = parse("my.[k=v]metric:1|c");
    let sample = got.only();
    assert_eq!(sample.name, "my.metric");
    assert_eq!(sample.style, TagStyle::SignalFx);
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
}

#[test]
fn empty_signalfx_section_inside_the_name_gives_no_tags() {
    let got = parse("my.[]metric:1|c");
    assert_eq!(got.only().name, "my.metric");
    assert_eq!(got.pairs[0], pairs(&[]));
}

#[test]
fn signalfx_tags_without_values_are_dropped_and_counted() {
    let got = parse("my.[a,b]metric:1|c");
    assert_eq!(
        got.rejects(),
        [Reason::TagWithoutValue, Reason::TagWithoutValue]
    );
    assert_eq!(got.only_sample().name, "my.metric");
    assert_eq!(got.pairs[0], pairs(&[]));
}

#[test]
fn unclosed_signalfx_bracket_keeps_the_whole_name() {
    let got = parse("req[env=prod:1|c");
    assert_eq!(got.only().name, "req[env=prod");
    assert_eq!(got.only().style, TagStyle::None);
}

#[test]
fn lone_bracket_turns_off_every_name_tag_style() {
    for line in ["tag1=bar,tag2=baz]foo.test", "[tag1=bar,tag2=bazfoo.test"] {
        let got = parse(format!("{line}:1|c"));
        assert_eq!(got.only().name, line);
        assert_eq!(got.only().style, TagStyle::None);
    }
    assert_eq!(parse("a#k=v]:1|c").only().name, "a#k=v]");
}

#[test]
fn lone_bracket_keeps_the_whole_name_with_packed_values_and_any_type() {
    for kind in ["c", "g", "ms", "h", "d"] {
        let got = parse(format!("a[b:1:2|{kind}"));
        assert_eq!(got.names(), ["a[b", "a[b"], "{kind}");
        assert_eq!(got.rejects(), []);
    }
    assert_eq!(parse("a]b:x|s").only().name, "a]b");
}

#[test]
fn closing_bracket_before_opening_keeps_the_whole_name() {
    // statsd_exporter would slice past the end and crash here.
    assert_eq!(parse("a]b[c=d:1|c").only().name, "a]b[c=d");
}

#[test]
fn text_after_the_signalfx_section_stays_in_the_name() {
    // Only the first `[` … first `]` is a section; what is left is name, sanitised later.
    assert_eq!(parse("req[a=b][c=d]:1|c").only().name, "req[c=d]");
    assert_eq!(parse("[a=b]req[c=d]:1|c").only().name, "req[c=d]");
    let got = parse("req,a=b[c=d]:1|c");
    assert_eq!(got.only().name, "req,a=b");
    assert_eq!(got.pairs[0], pairs(&[("c", "d")]));
    assert_eq!(parse("[c=d]req,a=b:1|c").only().name, "req,a=b");
}

#[test]
fn lone_closing_bracket_is_part_of_the_name() {
    assert_eq!(parse("a]b:1|c").only().name, "a]b");
}

#[test]
fn name_tags_with_dogstatsd_tags_are_refused() {
    for line in [
        "req,env=prod:1|c|#k:v",
        "req#env=prod:1|c|#k:v",
        "req[env=prod]:1|c|#k:v",
    ] {
        assert_refused(line, Reason::MalformedTags);
    }
}

#[test]
fn name_tags_without_a_label_do_not_conflict_with_dogstatsd_tags() {
    // statsd_exporter refuses mixed styles only when the name tags gave a label.
    let got = parse("req.[]count:1|c|#k:v");
    assert_eq!(got.only().name, "req.count");
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
    let got = parse("req[flag]:1|c|#k:v");
    assert_eq!(got.rejects(), [Reason::TagWithoutValue]);
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
    assert_eq!(parse("req[env:1|c|#k:v").only().name, "req[env");
}

#[test]
fn valueless_name_tag_is_counted_and_line_kept() {
    let got = parse("req,flag,env=prod:1|c");
    assert_eq!(got.rejects(), [Reason::TagWithoutValue]);
    assert_eq!(got.pairs[0], pairs(&[("env", "prod")]));
}

#[test]
fn empty_name_tag_value_is_counted_and_line_kept() {
    let got = parse("req#env=,=x,k=v:1|c");
    assert_eq!(
        got.rejects(),
        [Reason::EmptyTagValue, Reason::EmptyTagValue]
    );
    assert_eq!(got.pairs[0], pairs(&[("k", "v")]));
}

#[test]
fn empty_name_before_name_tags_is_refused() {
    assert_refused(",env=prod:1|c", Reason::EmptyName);
    assert_refused("[env=prod]:1|c", Reason::EmptyName);
}

#[test]
fn invalid_utf8_in_name_tags_is_refused() {
    assert_refused(b"req,env=\xc3:1|c", Reason::InvalidUtf8);
}

#[test]
fn name_tags_apply_to_every_etsy_sample() {
    let got = parse("req,env=prod:1|c:2|g");
    assert_eq!(got.samples().len(), 2);
    for sample in got.samples() {
        assert_eq!(sample.tags, b"env=prod");
        assert_eq!(sample.style, TagStyle::Influx);
    }
}

// ---------------------------------------------------------------------------------------------
// Container ids

#[test]
fn container_id_is_kept() {
    let got = parse("a:1|g|#k:v|c:0f3b9e4a");
    assert_eq!(got.only().container_id.as_deref(), Some("0f3b9e4a"));
}

#[test]
fn bare_container_field_is_refused() {
    assert_refused("a:1|g|c", Reason::EmptyContainerId);
    assert_refused("a:1|g|c|#k:v", Reason::EmptyContainerId);
}

#[test]
fn empty_container_id_is_refused() {
    assert_refused("a:1|g|c:", Reason::EmptyContainerId);
    assert_refused("a:1|g|c:|#k:v", Reason::EmptyContainerId);
}

#[test]
fn invalid_utf8_in_container_id_is_refused() {
    assert_refused(b"a:1|g|c:\xff", Reason::InvalidUtf8);
}

#[test]
fn last_container_id_wins() {
    assert_eq!(
        parse("a:1|g|c:one|c:two").only().container_id.as_deref(),
        Some("two")
    );
}

// ---------------------------------------------------------------------------------------------
// Ignored fields

#[test]
fn timestamp_field_is_ignored() {
    assert_eq!(parse("a:1|c|T1656581400").only().value, n(1.0));
}

#[test]
fn external_data_field_is_ignored() {
    assert_eq!(
        parse("a:1|c|e:it-false,cn-nginx,pu-123").only().value,
        n(1.0)
    );
}

#[test]
fn cardinality_field_is_ignored() {
    assert_eq!(parse("a:1|c|card:low").only().value, n(1.0));
}

#[test]
fn unknown_field_is_ignored() {
    assert_eq!(parse("a:1|c|x:unknown").only().value, n(1.0));
    assert_eq!(parse("a:1|c|cx").only().container_id, None);
}

// An empty field was ignored; statsd_exporter refuses the line ("empty component" in its
// `TestLineToEvents` and `TestHandlePacket`, tests/statsd_exporter.rs), and so does tallyd now.
#[test]
fn empty_field_is_refused() {
    assert_refused("a:1|c|", Reason::MissingType);
    assert_refused("a:1|c||#k:v", Reason::MissingType);
    assert_refused("a:1|c|@0.5|", Reason::MissingType);
    assert_refused("a:1|c|#k:v|", Reason::MissingType);
}

// ---------------------------------------------------------------------------------------------
// UTF-8 names

#[test]
fn invalid_utf8_in_name_is_refused() {
    assert_refused(b"caf\xe9:1|c", Reason::InvalidUtf8);
}

#[test]
fn utf8_name_is_kept() {
    assert_eq!(parse("café.visits:1|c").only().name, "café.visits");
}

// ---------------------------------------------------------------------------------------------
// Hostile input

#[test]
fn line_longer_than_64_kib_is_refused() {
    let line = format!("a:1|c|#k:{}", "v".repeat(64 * 1024));
    assert_refused(line, Reason::LineTooLong);
}

#[test]
fn line_of_exactly_64_kib_is_accepted() {
    let prefix = "a:1|c|#k:";
    let line = format!("{prefix}{}", "v".repeat(64 * 1024 - prefix.len()));
    assert_eq!(line.len(), 64 * 1024);
    assert_eq!(parse(line).samples().len(), 1);
}

#[test]
fn megabyte_line_is_refused_and_neighbours_parse() {
    let datagram = format!("a:1|c\nb:{}|c\nc:1|c\n", "1".repeat(1 << 20));
    let got = parse(datagram);
    assert_eq!(got.names(), ["a", "c"]);
    assert_eq!(got.rejects(), [Reason::LineTooLong]);
}

#[test]
fn binary_junk_is_refused() {
    assert_refused(b"\x01\x02\xff\xfe:\x80|\x00", Reason::InvalidUtf8);
    assert_refused(b"\xff\xff\xff\xff", Reason::MissingColon);
}

#[test]
fn nul_name_is_valid_utf8_and_kept_for_sanitising() {
    assert_eq!(parse(b"\x00:1|c").only().name, "\0");
}

#[test]
fn line_of_only_pipes_is_refused() {
    assert_refused("||||||", Reason::MissingColon);
}

#[test]
fn line_of_only_colons_is_refused() {
    assert_refused("::::::", Reason::EmptyName);
}

#[test]
fn every_truncation_of_a_good_line_is_read_or_refused_once() {
    let line = "page.views,env=prod:1:2|c|@0.5|T1656581400";
    for end in 1..=line.len() {
        let got = parse(&line[..end]);
        let refused = got.rejects().iter().filter(|r| !is_warning(**r)).count();
        assert!(
            (got.samples().is_empty() && refused == 1 && got.seen.len() == 1)
                || (!got.samples().is_empty() && refused == 0),
            "{:?} -> {:?}",
            &line[..end],
            got.seen
        );
    }
}

#[test]
fn ten_thousand_tags_are_kept() {
    let tags: Vec<String> = (0..10_000)
        .map(|i| {
            let key: String = [i / 676, i / 26 % 26, i % 26]
                .iter()
                .map(|d| char::from(b'a' + *d as u8))
                .collect();
            format!("{key}:v")
        })
        .collect();
    let line = format!("a:1|c|#{}", tags.join(","));
    assert!(line.len() <= 64 * 1024);
    let got = parse(line);
    assert_eq!(got.samples().len(), 1);
    assert_eq!(got.pairs[0].len(), 10_000);
    assert_eq!(got.pairs[0][9_999], ("oup".to_string(), "v".to_string()));
}

#[test]
fn ten_thousand_valueless_tags_are_each_counted() {
    let line = format!("a:1|c|#{}", vec!["flag"; 10_000].join(","));
    let got = parse(line);
    assert_eq!(got.samples().len(), 1);
    assert_eq!(got.rejects().len(), 10_000);
}

#[test]
fn thirty_thousand_packed_values_give_thirty_thousand_samples() {
    let line = format!("a:{}|h", vec!["1"; 30_000].join(":"));
    assert_eq!(parse(line).samples().len(), 30_000);
}

#[test]
fn ten_thousand_etsy_segments_give_ten_thousand_samples() {
    let line = format!("a:{}", vec!["1|c"; 10_000].join(":"));
    assert_eq!(parse(line).samples().len(), 10_000);
}

// ---------------------------------------------------------------------------------------------
// Real client output

#[test]
fn python_datadog_counter_parses() {
    let got = parse("page.views:1|c|#env:prod");
    assert_eq!(got.only().name, "page.views");
    assert_eq!(got.pairs[0], pairs(&[("env", "prod")]));
}

#[test]
fn python_datadog_sampled_histogram_parses() {
    let got = parse("latency:12.5|h|@0.5|#model:v1");
    let sample = got.only();
    assert_eq!(
        (sample.metric_type, &sample.value, sample.sample_rate),
        (MetricType::Histogram, &n(12.5), 0.5)
    );
    assert_eq!(got.pairs[0], pairs(&[("model", "v1")]));
}

#[test]
fn etsy_statsd_sampled_counter_parses() {
    let sample = parse("foo:1|c|@0.1").only().clone();
    assert_eq!((sample.value, sample.sample_rate), (n(1.0), 0.1));
}

#[test]
fn hot_shots_timer_parses() {
    let got = parse("foo:1|ms|#a:b");
    assert_eq!(got.only().metric_type, MetricType::Timer);
    assert_eq!(got.pairs[0], pairs(&[("a", "b")]));
}

#[test]
fn go_datadog_gauge_with_container_parses() {
    let got = parse("foo:1|g|#a:b|c:abcdef");
    let sample = got.only();
    assert_eq!(sample.metric_type, MetricType::Gauge);
    assert_eq!(sample.container_id.as_deref(), Some("abcdef"));
    assert_eq!(got.pairs[0], pairs(&[("a", "b")]));
}

#[test]
fn dogstatsd_v1_1_packed_distribution_parses() {
    let got = parse("foo:1:2:3|d|#a:b");
    assert_eq!(got.values(), [n(1.0), n(2.0), n(3.0)]);
    assert!(got.pairs.iter().all(|p| *p == pairs(&[("a", "b")])));
}

#[test]
fn dogstatsd_timestamped_counter_parses() {
    let got = parse("foo:1|c|#a:b|T1656581400");
    assert_eq!(got.only().value, n(1.0));
    assert_eq!(got.pairs[0], pairs(&[("a", "b")]));
}

#[test]
fn typical_buffered_datagram_parses() {
    let datagram = "page.views:1|c|@0.5|#env:prod,service:web,version:1.2.3\n\
                    latency:12.5|h|#model:v1\n\
                    queue.depth:-3|g\n\
                    users:alice|s\n";
    let got = parse(datagram);
    assert_eq!(got.rejects(), []);
    assert_eq!(
        got.names(),
        ["page.views", "latency", "queue.depth", "users"]
    );
}

#[test]
fn carriage_return_ending_the_datagram_is_stripped() {
    assert_eq!(parse("a:1|c\r").only().value, n(1.0));
}

#[test]
fn parse_line_takes_the_line_as_it_is() {
    let mut got = Recorder::default();
    parse_line(b"a:1|c\r", &ParseOptions::default(), &mut got);
    assert_eq!(got.seen, [Seen::Reject(Reason::UnknownType)]);
}

#[test]
fn failed_etsy_reading_of_a_tagged_line_is_read_as_dogstatsd() {
    // With `|#` the rule is off: `0.5:x` is one (invalid) rate, `zz` an unknown field.
    let got = parse("a:1|c|@0.5:x|zz|#k:v");
    assert_eq!(got.rejects(), [Reason::InvalidSampleRate]);
    assert_eq!(got.only_sample().tags, b"k:v");
}

#[test]
fn tag_section_in_the_type_position_is_an_unknown_type() {
    assert_refused("a:1|#k:v", Reason::UnknownType);
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Reasons reported for a line that is kept.
fn is_warning(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::InvalidSampleRate | Reason::TagWithoutValue | Reason::EmptyTagValue
    )
}

/// A line gives samples (with warnings at most) or exactly one refusal and nothing else.
fn assert_line_outcome(line: &[u8]) {
    let mut got = Recorder::default();
    parse_line(line, &ParseOptions::default(), &mut got);
    let refusals = got.rejects().iter().filter(|r| !is_warning(**r)).count();
    let samples = got.samples().len();
    let extensions = got.extensions().len();
    let ok = if line.is_empty() {
        got.seen.is_empty()
    } else if extensions == 1 {
        got.seen.len() == 1
    } else if samples == 0 {
        refusals == 1 && got.seen.len() == 1
    } else {
        refusals == 0
    };
    assert!(ok, "{:?} -> {:?}", String::from_utf8_lossy(line), got.seen);
}

/// The grammar's alphabet, plus the signs and letters that make types and fields.
const ALPHABET: &str = "[a-z0-9.:|#@,=\\[\\]_\\-+ce]";

/// What the tag rules of DESIGN.md §3 say about a tag section, written the obvious way:
/// (usable pairs, tags without a value, tags with an empty key or value).
fn reference_tags(raw: &str, separator: char) -> (Vec<(String, String)>, usize, usize) {
    let (mut pairs, mut without_value, mut empty) = (Vec::new(), 0, 0);
    for tag in raw.split(',').filter(|tag| !tag.is_empty()) {
        let tag = match separator {
            ':' => tag.strip_prefix('#').unwrap_or(tag),
            _ => tag,
        };
        match tag.split_once(separator) {
            None => without_value += 1,
            Some((key, value)) if key.is_empty() || value.is_empty() => empty += 1,
            Some((key, value)) => pairs.push((key.to_string(), value.to_string())),
        }
    }
    (pairs, without_value, empty)
}

fn count(got: &Recorder, reason: Reason) -> usize {
    got.rejects().iter().filter(|r| **r == reason).count()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(datagram in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse(&datagram);
    }

    #[test]
    fn grammar_alphabet_datagrams_never_panic(
        datagram in "[a-z0-9.:|#@,=\\[\\]_\n-]{0,256}",
    ) {
        parse(&datagram);
    }

    #[test]
    fn grammar_alphabet_lines_are_read_or_refused_once(
        line in proptest::string::string_regex(&format!("{ALPHABET}{{0,96}}")).unwrap(),
    ) {
        assert_line_outcome(line.as_bytes());
    }

    #[test]
    fn arbitrary_lines_are_read_or_refused_once(
        line in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let line: Vec<u8> = line.into_iter().filter(|b| *b != b'\n').collect();
        assert_line_outcome(&line);
    }

    #[test]
    fn well_formed_counter_value_round_trips(
        name in "[a-z][a-z0-9_.]{0,30}",
        value in 0.0f64..1e15,
        rate in proptest::option::of(0.001f64..=1.0),
        tags in proptest::option::of(
            "[a-z]{1,8}:[a-z0-9:]{1,8}(,[a-z]{1,8}:[a-z0-9:]{1,8}){0,5}",
        ),
    ) {
        let mut line = format!("{name}:{value}|c");
        if let Some(rate) = rate {
            line.push_str(&format!("|@{rate}"));
        }
        if let Some(tags) = &tags {
            line.push_str(&format!("|#{tags}"));
        }
        let got = parse(&line);
        let sample = got.only();
        prop_assert_eq!(&sample.name, &name);
        prop_assert_eq!(&sample.value, &n(value));
        prop_assert_eq!(sample.sample_rate, rate.unwrap_or(1.0));
        let expected = tags.unwrap_or_default();
        prop_assert_eq!(&sample.tags, expected.as_bytes());
    }

    #[test]
    fn well_formed_integer_counter_round_trips(
        name in "[a-z][a-z0-9_.]{0,30}",
        value in any::<u32>(),
    ) {
        let got = parse(format!("{name}:{value}|c"));
        prop_assert_eq!(&got.only().value, &n(f64::from(value)));
    }

    #[test]
    fn well_formed_packed_values_round_trip(
        values in proptest::collection::vec(-1e9f64..1e9, 1..40),
        kind in proptest::sample::select(vec!["ms", "h", "d"]),
    ) {
        let text: Vec<String> = values.iter().map(f64::to_string).collect();
        let got = parse(format!("a:{}|{kind}|#k:v", text.join(":")));
        prop_assert_eq!(got.rejects(), []);
        let expected: Vec<Owned> = values.iter().map(|v| n(*v)).collect();
        prop_assert_eq!(got.values(), expected);
    }

    #[test]
    fn well_formed_etsy_lines_give_each_sample_in_order(
        segments in proptest::collection::vec(
            (0u32..1000, proptest::sample::select(vec!["c", "g", "ms", "h", "d"])),
            1..20,
        ),
    ) {
        let body: Vec<String> = segments.iter().map(|(v, t)| format!("{v}|{t}")).collect();
        let got = parse(format!("a:{}", body.join(":")));
        prop_assert_eq!(got.rejects(), []);
        let seen: Vec<_> = got
            .samples()
            .iter()
            .map(|g| (g.value.clone(), g.metric_type.wire()))
            .collect();
        let expected: Vec<_> = segments.iter().map(|(v, t)| (n(f64::from(*v)), *t)).collect();
        prop_assert_eq!(seen, expected);
    }

    #[test]
    fn dogstatsd_tag_rules_match_the_reference(raw in "[a-c:,#]{0,40}") {
        let got = parse(format!("a:1|c|#{raw}"));
        let (pairs, without_value, empty) = reference_tags(&raw, ':');
        prop_assert_eq!(got.samples().len(), 1);
        prop_assert_eq!(&got.pairs[0], &pairs);
        prop_assert_eq!(count(&got, Reason::TagWithoutValue), without_value);
        prop_assert_eq!(count(&got, Reason::EmptyTagValue), empty);
    }

    #[test]
    fn influx_tag_rules_match_the_reference(raw in "[a-c=,]{0,40}") {
        let got = parse(format!("a,{raw}:1|c"));
        let (pairs, without_value, empty) = reference_tags(&raw, '=');
        prop_assert_eq!(got.samples().len(), 1);
        prop_assert_eq!(&got.pairs[0], &pairs);
        prop_assert_eq!(count(&got, Reason::TagWithoutValue), without_value);
        prop_assert_eq!(count(&got, Reason::EmptyTagValue), empty);
    }
}
