//! Arbitrary bytes as one datagram, parsed with both `ParseOptions`.
//!
//! Every sample, rejection and extension goes through a sink that checks the grammar's
//! promises (DESIGN.md §3 and the docs in `src/protocol/`); a broken promise panics, which
//! libFuzzer reports as a crash. Besides the per-sample invariants, three cross-checks:
//!
//! - `parse_datagram` gives exactly what `parse_line` gives for each line of the datagram
//!   (split at `\n`, one trailing `\r` stripped);
//! - `gauge_deltas: false` gives exactly what `gauge_deltas: true` gives, with every
//!   `GaugeDelta(x)` read as `Number(x)`;
//! - a line whose one sample comes from a single plain value has the value `str::parse::<f64>`
//!   gives for that text (the parser's fast decimal path must agree with `std` bit for bit).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tallyd::protocol::{
    Extension, MetricType, ParseOptions, Reason, Sample, SampleSink, TagStyle, Value,
    parse_datagram, parse_line,
};

fuzz_target!(|data: &[u8]| {
    let deltas = run(data, ParseOptions { gauge_deltas: true });
    let absolute = run(
        data,
        ParseOptions {
            gauge_deltas: false,
        },
    );
    let as_absolute: Vec<Event> = deltas.into_iter().map(Event::without_deltas).collect();
    assert_eq!(
        as_absolute, absolute,
        "gauge_deltas changed more than the gauge deltas"
    );
});

/// Parses `data` as a datagram and line by line; returns the (checked, identical) events.
fn run(data: &[u8], options: ParseOptions) -> Vec<Event> {
    let mut whole = Checker::new(options, None);
    parse_datagram(data, &options, &mut whole);
    whole.finish();

    let mut by_line = Vec::new();
    let mut lines = 0;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let mut one = Checker::new(options, Some(line));
        parse_line(line, &options, &mut one);
        one.finish();
        assert_eq!(
            one.lines, 1,
            "parse_line must announce a non-empty line once"
        );
        check_line(line, &one.events);
        by_line.extend(one.events);
    }
    assert_eq!(
        whole.lines, lines,
        "SampleSink::line calls vs non-empty lines"
    );
    assert_eq!(
        whole.events, by_line,
        "parse_datagram and parse_line disagree"
    );
    whole.events
}

/// An owned copy of what the sink received. Floats are compared by their bits.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    Line,
    Sample {
        name: String,
        metric_type: MetricType,
        value: OwnedValue,
        rate_bits: u64,
        tags: Vec<u8>,
        style: TagStyle,
        container_id: Option<String>,
    },
    Reject(Reason),
    Extension(Extension),
}

#[derive(Clone, Debug, PartialEq)]
enum OwnedValue {
    Number(u64),
    GaugeDelta(u64),
    SetMember(Vec<u8>),
}

impl Event {
    fn without_deltas(self) -> Event {
        match self {
            Event::Sample {
                name,
                metric_type,
                value: OwnedValue::GaugeDelta(bits),
                rate_bits,
                tags,
                style,
                container_id,
            } => Event::Sample {
                name,
                metric_type,
                value: OwnedValue::Number(bits),
                rate_bits,
                tags,
                style,
                container_id,
            },
            other => other,
        }
    }
}

/// Reasons that refuse a whole line: at most one per line, and nothing else from that line.
fn refuses_line(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::MissingColon
            | Reason::EmptyName
            | Reason::MissingType
            | Reason::UnknownType
            | Reason::InvalidValue
            | Reason::NonFiniteValue
            | Reason::NegativeCounter
            | Reason::InvalidUtf8
            | Reason::MalformedTags
            | Reason::EmptyContainerId
            | Reason::LineTooLong
    )
}

/// Reasons reported for a kept line, before its samples.
fn keeps_line(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::InvalidSampleRate | Reason::TagWithoutValue | Reason::EmptyTagValue
    )
}

/// Per-line bookkeeping while events arrive.
#[derive(Default)]
struct LineState {
    samples: usize,
    refusals: usize,
    warnings: usize,
    extensions: usize,
    /// A warning after the line's first sample (allowed only for a later segment's rate).
    warning_after_sample: bool,
}

impl LineState {
    /// A refusal or an extension is a line's one outcome: nothing may have come before it.
    fn assert_no_outcome_yet(&self, what: &str) {
        assert_eq!(
            (self.samples, self.refusals, self.warnings, self.extensions),
            (0, 0, 0, 0),
            "{what} in a line that already had another outcome"
        );
    }
}

struct Checker<'l> {
    options: ParseOptions,
    /// In line mode, the line: every borrowed view must point into it.
    line: Option<&'l [u8]>,
    lines: usize,
    current: Option<LineState>,
    events: Vec<Event>,
}

impl<'l> Checker<'l> {
    fn new(options: ParseOptions, line: Option<&'l [u8]>) -> Self {
        Checker {
            options,
            line,
            lines: 0,
            current: None,
            events: Vec::new(),
        }
    }

    fn state(&mut self) -> &mut LineState {
        self.current
            .as_mut()
            .expect("an event before the first SampleSink::line call")
    }

    fn end_line(&mut self) {
        let Some(state) = self.current.take() else {
            return;
        };
        let outcomes = state.samples.min(1) + state.refusals + state.extensions;
        assert_eq!(
            outcomes, 1,
            "a line must end in exactly one of: samples, one refusal, one extension \
             (samples {}, refusals {}, extensions {}, warnings {})",
            state.samples, state.refusals, state.extensions, state.warnings
        );
        if state.samples == 0 {
            assert_eq!(state.warnings, 0, "warnings for a line that kept nothing");
        }
    }

    fn finish(&mut self) {
        self.end_line();
    }

    /// `inner` must be a view into the line being parsed (line mode only).
    fn assert_inside(&self, inner: &[u8], what: &str) {
        let Some(line) = self.line else { return };
        if inner.is_empty() {
            return;
        }
        let (start, end) = (line.as_ptr() as usize, line.as_ptr() as usize + line.len());
        let (a, b) = (
            inner.as_ptr() as usize,
            inner.as_ptr() as usize + inner.len(),
        );
        assert!(
            start <= a && b <= end,
            "{what} does not borrow from the line"
        );
    }
}

impl SampleSink for Checker<'_> {
    fn line(&mut self) {
        self.end_line();
        self.lines += 1;
        self.current = Some(LineState::default());
        self.events.push(Event::Line);
    }

    fn sample(&mut self, sample: &Sample<'_>) {
        check_sample(sample, &self.options);
        for piece in sample.name.pieces() {
            self.assert_inside(piece.as_bytes(), "the name");
        }
        self.assert_inside(sample.tags.raw, "the tags");
        if let Some(id) = sample.container_id {
            self.assert_inside(id.as_bytes(), "the container id");
        }
        if let Value::SetMember(member) = sample.value {
            self.assert_inside(member, "the set member");
        }
        let state = self.state();
        assert_eq!(
            state.refusals + state.extensions,
            0,
            "a sample after a refusal"
        );
        state.samples += 1;
        self.events.push(Event::Sample {
            name: sample.name.to_string(),
            metric_type: sample.metric_type,
            value: match sample.value {
                Value::Number(n) => OwnedValue::Number(n.to_bits()),
                Value::GaugeDelta(n) => OwnedValue::GaugeDelta(n.to_bits()),
                Value::SetMember(m) => OwnedValue::SetMember(m.to_vec()),
            },
            rate_bits: sample.sample_rate.to_bits(),
            tags: sample.tags.raw.to_vec(),
            style: sample.tags.style,
            container_id: sample.container_id.map(str::to_owned),
        });
    }

    fn reject(&mut self, reason: Reason) {
        let state = self.state();
        if refuses_line(reason) {
            state.assert_no_outcome_yet(&format!("refusal {reason:?}"));
            state.refusals += 1;
        } else if keeps_line(reason) {
            assert_eq!(
                state.refusals + state.extensions,
                0,
                "{reason:?} after a refusal"
            );
            if state.samples > 0 {
                // Only a later Etsy segment's own rate can be reported after a sample.
                assert_eq!(
                    reason,
                    Reason::InvalidSampleRate,
                    "tag warning after the first sample"
                );
                state.warning_after_sample = true;
            }
            state.warnings += 1;
        } else {
            panic!("the parser reported {reason:?}, which only ingest may report");
        }
        self.events.push(Event::Reject(reason));
    }

    fn extension(&mut self, kind: Extension) {
        let state = self.state();
        state.assert_no_outcome_yet("extension");
        state.extensions += 1;
        self.events.push(Event::Extension(kind));
    }
}

/// What every sample promises, whatever line it came from.
fn check_sample(sample: &Sample<'_>, options: &ParseOptions) {
    let name = sample.name;
    assert!(!name.is_empty(), "empty name");
    assert!(
        !name.bytes().any(|b| matches!(b, b':' | b'|' | b'\n')),
        "name {name:?} holds a separator"
    );
    // InfluxDB and Librato sections start at the first `,` or `#` of a name without brackets.
    if matches!(sample.tags.style, TagStyle::Influx | TagStyle::Librato) {
        assert!(
            !name.bytes().any(|b| matches!(b, b',' | b'#' | b'[' | b']')),
            "name {name:?} still holds a tag introducer"
        );
    }

    let rate = sample.sample_rate;
    assert!(
        rate > 0.0 && rate <= 1.0,
        "sample rate {rate} outside (0, 1]"
    );

    match (sample.metric_type, sample.value) {
        (MetricType::Set, Value::SetMember(member)) => {
            assert!(!member.is_empty(), "empty set member");
            assert!(
                !member.iter().any(|b| matches!(b, b'|' | b'\n')),
                "set member {member:?} holds a separator"
            );
        }
        (MetricType::Set, value) => panic!("set with value {value:?}"),
        (_, Value::SetMember(_)) => panic!("set member for {:?}", sample.metric_type),
        (MetricType::Gauge, Value::GaugeDelta(n)) => {
            assert!(options.gauge_deltas, "a gauge delta with gauge_deltas off");
            assert!(n.is_finite(), "non-finite gauge delta {n}");
        }
        (metric_type, Value::GaugeDelta(_)) => panic!("delta for {metric_type:?}"),
        (metric_type, Value::Number(n)) => {
            assert!(n.is_finite(), "non-finite value {n}");
            if metric_type == MetricType::Counter {
                assert!(n >= 0.0, "negative counter {n}");
            }
        }
    }

    let tags = sample.tags;
    assert_eq!(
        tags.style == TagStyle::None,
        tags.raw.is_empty(),
        "tag style {:?} with raw {:?}",
        tags.style,
        tags.raw
    );
    assert!(
        !tags.raw.iter().any(|b| matches!(b, b'|' | b'\n')),
        "tag section {:?} holds a separator",
        tags.raw
    );
    assert!(
        std::str::from_utf8(tags.raw).is_ok(),
        "tag section {:?} is not UTF-8",
        tags.raw
    );
    let separator = if tags.style == TagStyle::DogStatsd {
        ':'
    } else {
        '='
    };
    let pairs: Vec<(&str, &str)> = tags.iter().collect();
    for (key, value) in &pairs {
        assert!(!key.is_empty() && !value.is_empty(), "empty tag half");
        assert!(
            !key.contains([',', separator]),
            "tag key {key:?} holds a separator"
        );
        assert!(!value.contains(','), "tag value {value:?} holds a comma");
    }
    let usable = tag_counts(tags.raw, separator as u8).usable;
    assert_eq!(pairs.len(), usable, "Tags::iter skipped a usable tag");

    if let Some(id) = sample.container_id {
        assert!(!id.is_empty(), "empty container id");
        assert!(
            !id.bytes().any(|b| matches!(b, b'|' | b'\n')),
            "container id {id:?} holds a separator"
        );
    }
}

#[derive(Default, Debug, PartialEq)]
struct TagCounts {
    usable: usize,
    without_value: usize,
    empty: usize,
}

/// Counts the tags of a section independently of the parser.
fn tag_counts(raw: &[u8], separator: u8) -> TagCounts {
    let mut counts = TagCounts::default();
    for tag in raw.split(|&b| b == b',') {
        if tag.is_empty() {
            continue;
        }
        // A DogStatsD tag's own leading `#` is not part of its key.
        let tag = match (separator, tag) {
            (b':', [b'#', rest @ ..]) => rest,
            _ => tag,
        };
        match tag.iter().position(|&b| b == separator) {
            None => counts.without_value += 1,
            Some(0) => counts.empty += 1,
            Some(i) if i + 1 == tag.len() => counts.empty += 1,
            Some(_) => counts.usable += 1,
        }
    }
    counts
}

/// The name-embedded tag section of the text before a line's `:`, by statsd_exporter's rules
/// written the obvious way: the first `[` and `]` if both are there in that order; nothing if
/// only one kind of bracket is; else after the first `,` or `#`.
fn reference_name_tags(section: &[u8]) -> Option<&[u8]> {
    let open = section.iter().position(|&b| b == b'[');
    let close = section.iter().position(|&b| b == b']');
    match (open, close) {
        (Some(open), Some(close)) if open < close => Some(&section[open + 1..close]),
        (None, None) => {
            let start = section.iter().position(|&b| b == b',' || b == b'#')?;
            Some(&section[start + 1..])
        }
        _ => None,
    }
}

/// Checks that relate one line's text to what it gave.
fn check_line(line: &[u8], events: &[Event]) {
    let samples: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Sample { .. }))
        .collect();

    // Events and service checks are recognised by their prefix, and only by it.
    let extension = if line.starts_with(b"_e{") {
        Some(Extension::Event)
    } else if line.starts_with(b"_sc|") {
        Some(Extension::ServiceCheck)
    } else {
        None
    };
    let got_extension = events.iter().find_map(|e| match e {
        Event::Extension(kind) => Some(*kind),
        _ => None,
    });
    if line.len() <= 64 * 1024 {
        assert_eq!(got_extension, extension, "extension recognition");
    }

    let Some(Event::Sample {
        name,
        metric_type,
        value,
        tags,
        style,
        ..
    }) = samples.first().copied()
    else {
        return;
    };

    // Every sample of a line shares its name, tags and container.
    for other in &samples {
        let Event::Sample {
            name: n, tags: t, ..
        } = other
        else {
            unreachable!()
        };
        assert!(
            n == name && t == tags,
            "samples of one line differ in name or tags"
        );
    }

    // Tag warnings: as many as the section has tags to drop, counted independently.
    let separator = if *style == TagStyle::DogStatsd {
        b':'
    } else {
        b'='
    };
    let mut counts = tag_counts(tags, separator);
    // Name tags that give no label beside `|#` tags are dropped, and counted too.
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .expect("a kept line has a colon");
    // (The samples' tags are then the `|#` section's, or none if it is empty.)
    if !matches!(
        style,
        TagStyle::Influx | TagStyle::Librato | TagStyle::SignalFx
    ) && let Some(name_tags) = reference_name_tags(&line[..colon])
    {
        let dropped = tag_counts(name_tags, b'=');
        assert_eq!(dropped.usable, 0, "name tags with a label beside `|#` tags");
        counts.without_value += dropped.without_value;
        counts.empty += dropped.empty;
    }
    let reported = |reason: Reason| {
        events
            .iter()
            .filter(|e| **e == Event::Reject(reason))
            .count()
    };
    assert_eq!(
        (
            reported(Reason::TagWithoutValue),
            reported(Reason::EmptyTagValue)
        ),
        (counts.without_value, counts.empty),
        "tag warnings vs the tags {:?}",
        String::from_utf8_lossy(tags)
    );

    // The name is the text before the first `:` when no tag section is embedded in it.
    let section = &line[..colon];
    if reference_name_tags(section).is_none() {
        assert_eq!(
            name.as_bytes(),
            section,
            "the name is not the text before ':'"
        );
    }

    // One sample from a single plain value: the value is that text, read as `std` reads it.
    if samples.len() != 1 {
        return;
    }
    let body = &line[colon + 1..];
    let Some(pipe) = body.iter().position(|&b| b == b'|') else {
        panic!("a kept line without '|'");
    };
    let text = &body[..pipe];
    if *metric_type == MetricType::Set {
        assert_eq!(
            *value,
            OwnedValue::SetMember(text.to_vec()),
            "set member text"
        );
        return;
    }
    if text.contains(&b':') {
        return;
    }
    let expected = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .expect("a kept value that std does not read");
    let bits = match value {
        OwnedValue::Number(bits) | OwnedValue::GaugeDelta(bits) => *bits,
        OwnedValue::SetMember(_) => unreachable!(),
    };
    assert_eq!(
        bits,
        expected.to_bits(),
        "value of {:?}: got {}, std reads {expected}",
        String::from_utf8_lossy(text),
        f64::from_bits(bits)
    );
    if let OwnedValue::GaugeDelta(_) = value {
        assert!(
            matches!(text.first(), Some(b'+' | b'-')),
            "a delta without a sign"
        );
    }
}
