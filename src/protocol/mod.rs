//! The StatsD / DogStatsD wire grammar: a datagram becomes lines, a line becomes [`Sample`]s
//! borrowed from the datagram, and every line that cannot be used is reported with a [`Reason`].
//!
//! Nothing here allocates: samples, names, tags and set members are views into the datagram (a
//! name is one or two of them, see [`Name`]).
//! The grammar and its semantics are DESIGN.md §3; `parser` holds the implementation.

mod parser;

pub use parser::{parse_datagram, parse_line};

/// The StatsD type letter of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `ms`
    Timer,
    /// `h`
    Histogram,
    /// `d`
    Distribution,
    /// `s`
    Set,
}

impl MetricType {
    /// The type as it is spelled on the wire.
    pub fn wire(self) -> &'static str {
        match self {
            MetricType::Counter => "c",
            MetricType::Gauge => "g",
            MetricType::Timer => "ms",
            MetricType::Histogram => "h",
            MetricType::Distribution => "d",
            MetricType::Set => "s",
        }
    }
}

/// One value of a line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A plain number: the increment of a counter, the new value of a gauge, an observation.
    Number(f64),
    /// A gauge value written with a leading `+` or `-` while Etsy delta semantics are on:
    /// add it to the current value instead of setting it.
    GaugeDelta(f64),
    /// A set member, verbatim.
    SetMember(&'a [u8]),
}

/// Which of the tag notations a line used. Only one is allowed per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TagStyle {
    /// No tags at all.
    None,
    /// `|#k:v,k2:v2` (the value may itself contain `:`)
    DogStatsd,
    /// `name,k=v,k2=v2:1|c`
    Influx,
    /// `name#k=v,k2=v2:1|c`
    Librato,
    /// `name[k=v,k2=v2]:1|c`, or the section anywhere in the name: `na[k=v]me`
    SignalFx,
}

/// The tags of a line as a borrowed view. The parser has already checked them: the text is UTF-8,
/// and [`Tags::iter`] skips (and the parser has counted) tags without a value. A DogStatsD tag's
/// own leading `#` is not part of its key (the PHP client writes `|#k:v,#k2:v2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tags<'a> {
    /// The tag section without its introducer (`#`, `,`, `[`...`]`), e.g. `k:v,k2:v2`.
    pub raw: &'a [u8],
    pub style: TagStyle,
}

impl<'a> Tags<'a> {
    pub const NONE: Tags<'static> = Tags {
        raw: b"",
        style: TagStyle::None,
    };

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The usable `(key, value)` pairs in wire order; tags with an empty key or value are skipped.
    /// One leading `#` of a DogStatsD tag is dropped first, as statsd_exporter does.
    pub fn iter(&self) -> TagIter<'a> {
        TagIter {
            // One check for the whole section rather than one per key and value. The parser
            // hands out only sections it has checked, so this never fails (if it did, the
            // section would yield no tags).
            rest: std::str::from_utf8(self.raw).unwrap_or(""),
            separator: match self.style {
                TagStyle::DogStatsd => b':',
                _ => b'=',
            },
        }
    }
}

/// Iterator behind [`Tags::iter`].
#[derive(Clone, Debug)]
pub struct TagIter<'a> {
    rest: &'a str,
    separator: u8,
}

impl<'a> Iterator for TagIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            // Splitting at ASCII bytes (`,` and the separator) keeps every piece valid UTF-8.
            let (tag, rest) = match memchr::memchr(b',', self.rest.as_bytes()) {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, ""),
            };
            self.rest = rest;
            let tag = match self.separator {
                b':' => tag.strip_prefix('#').unwrap_or(tag),
                _ => tag,
            };
            let Some(split) = memchr::memchr(self.separator, tag.as_bytes()) else {
                continue;
            };
            let (key, value) = (&tag[..split], &tag[split + 1..]);
            if key.is_empty() || value.is_empty() {
                continue;
            }
            return Some((key, value));
        }
        None
    }
}

/// A metric name as sent, without its name-embedded tags; not yet sanitised. Usually one piece
/// of the datagram; two when a SignalFX tag section sat inside it (`my.[k=v]metric` is `my.`
/// followed by `metric`), since a borrowed view cannot skip the section. It compares and prints
/// as the text of its pieces one after the other.
#[derive(Clone, Copy)]
pub struct Name<'a> {
    /// Never empty unless the whole name is.
    head: &'a str,
    tail: &'a str,
}

impl<'a> Name<'a> {
    /// A one-piece name.
    pub const fn new(name: &'a str) -> Self {
        Name {
            head: name,
            tail: "",
        }
    }

    /// The name made of `head` followed by `tail`.
    pub fn joined(head: &'a str, tail: &'a str) -> Self {
        if head.is_empty() {
            Name::new(tail)
        } else {
            Name { head, tail }
        }
    }

    /// The name as one `&str` when it is one piece (nearly always); `None` for two.
    #[inline]
    pub fn as_str(&self) -> Option<&'a str> {
        self.tail.is_empty().then_some(self.head)
    }

    /// The pieces in order; the second is empty for a one-piece name.
    #[inline]
    pub fn pieces(&self) -> [&'a str; 2] {
        [self.head, self.tail]
    }

    /// Appends the whole name to `out`.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.head);
        out.push_str(self.tail);
    }

    /// The bytes of the whole name.
    pub fn bytes(&self) -> impl Iterator<Item = u8> + 'a {
        self.head.bytes().chain(self.tail.bytes())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_empty()
    }
}

impl PartialEq for Name<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.bytes().eq(other.bytes())
    }
}

impl Eq for Name<'_> {}

impl PartialEq<str> for Name<'_> {
    fn eq(&self, other: &str) -> bool {
        other
            .strip_prefix(self.head)
            .is_some_and(|rest| rest == self.tail)
    }
}

impl PartialEq<&str> for Name<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.head)?;
        f.write_str(self.tail)
    }
}

impl std::fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\"{}{}\"",
            self.head.escape_debug(),
            self.tail.escape_debug()
        )
    }
}

/// One usable sample: a line gives one per value (packed values, Etsy multi-metric lines).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The metric name as sent, without any name-embedded tags. Not yet sanitised.
    pub name: Name<'a>,
    pub metric_type: MetricType,
    pub value: Value<'a>,
    /// In (0, 1]; a missing or invalid rate is 1.0.
    pub sample_rate: f64,
    pub tags: Tags<'a>,
    /// The DogStatsD `|c:` container id, if the line carried one.
    pub container_id: Option<&'a str>,
}

/// Parser switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// `true` (Etsy StatsD, the default): a gauge value with a leading `+`/`-` is a delta.
    /// `false` (DogStatsD agent): every gauge value is absolute; `-5` sets -5.
    pub gauge_deltas: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { gauge_deltas: true }
    }
}

crate::closed_set! {
    /// Why a line (or part of one) could not be used: the StatsD grammar's reasons. A closed
    /// set, each exported as `tallyd_sample_errors_total{reason="<label>"}`; why a well-formed
    /// sample was not recorded is [`crate::record::Refusal`].
    Reason;
    /// No `:` between name and value.
    /// The line is refused.
    MissingColon => "missing_colon",
    /// The name is empty.
    EmptyName => "empty_name",
    /// No `|type` after the value, or a `|` with nothing after it (`a:1|c|`, `a:1|c||#k:v`):
    /// statsd_exporter refuses an empty field too.
    MissingType => "missing_type",
    /// A type other than `c g ms h d s`.
    UnknownType => "unknown_type",
    /// A value that is not a number (or an empty value).
    InvalidValue => "invalid_value",
    /// A value that is NaN or ±Inf.
    NonFiniteValue => "non_finite_value",
    /// A counter increment below zero.
    NegativeCounter => "negative_counter",
    /// The name, tags or container id are not valid UTF-8.
    InvalidUtf8 => "invalid_utf8",
    /// Name-embedded tags that give a label together with `|#` tags, or two `|#` sections.
    MalformedTags => "malformed_tags",
    /// `|c` or `|c:` without a container id.
    EmptyContainerId => "empty_container_id",
    /// A line longer than the parser accepts.
    LineTooLong => "line_too_long",
    /// The sample rate is outside (0, 1] or not a number: the sample is kept with rate 1.
    InvalidSampleRate => "invalid_sample_rate",
    /// A tag without a value (`#flag`): the tag is dropped, the line kept.
    TagWithoutValue => "tag_without_value",
    /// A tag with an empty value (`k:`) or empty key: the tag is dropped, the line kept.
    EmptyTagValue => "empty_tag_value",
}

/// DogStatsD extensions that are recognised, counted and skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    /// `_e{...}` events
    Event,
    /// `_sc|...` service checks
    ServiceCheck,
}

impl Extension {
    pub fn label(self) -> &'static str {
        match self {
            Extension::Event => "event",
            Extension::ServiceCheck => "service_check",
        }
    }
}

/// Where the parser delivers its results. `parse_datagram` calls these in wire order.
pub trait SampleSink {
    /// Called once for every non-empty line, before its samples or its rejection.
    fn line(&mut self) {}
    /// A usable sample.
    fn sample(&mut self, sample: &Sample<'_>);
    /// A line refused, or part of a line dropped, for `reason`.
    fn reject(&mut self, reason: Reason);
    /// An event or service check line, skipped.
    fn extension(&mut self, kind: Extension);
}
