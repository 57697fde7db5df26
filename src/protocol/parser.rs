//! The line parser: DESIGN.md §3 as code. A datagram is split into lines with `memchr`; a line
//! is read with small `nom` parsers over `&[u8]` and turned into [`Sample`]s that borrow from it.
//! Nothing here allocates.
//!
//! # How a line is read
//!
//! ```text
//! line    = name [name-tags] ":" body
//! body    = segment *(":" segment)        ; more than one only in Etsy multi-metric lines
//! segment = value *(":" value) "|" type *("|" field)
//! ```
//!
//! A line is all or nothing. It is checked in full (name, structure, tags, container id and every
//! value) before the first call to the sink, so a refused line produces exactly one refusing
//! [`Reason`] and no sample, even when only one of its packed values is bad (the DogStatsD agent
//! refuses such a line too). The reasons that keep the line ([`Reason::InvalidSampleRate`],
//! [`Reason::TagWithoutValue`], [`Reason::EmptyTagValue`]) are reported only for kept lines, just
//! before their samples.
//!
//! # Decisions on the ambiguous points
//!
//! - **The name** ends at the first `:`. A `|` before any `:` (or no `:`) is
//!   [`Reason::MissingColon`].
//! - **Name-embedded tags** are read as statsd_exporter reads them. A name holding both `[` and a
//!   later `]` has a SignalFX section between the first of each, wherever it sits: `my.[k=v]metric`
//!   is the name `my.metric` (a [`Name`] of two pieces) with the tags `k=v`; `my.[]metric` has
//!   none. Whatever else the rest of the name holds (another bracket, `,`, `#`) stays in it, to be
//!   sanitised. A name with only one kind of bracket, or a `]` before the first `[`, has no name
//!   tags at all: the whole text is the name (statsd_exporter's lone-bracket rule; with `]` first
//!   it would crash). Without brackets the first `,` (InfluxDB) or `#` (Librato) starts the tag
//!   section. Name tags that give a label in a line with `|#` tags are [`Reason::MalformedTags`]
//!   (one style per line); name tags that give none (`x.[]y`, `x[flag]`) are dropped, counted as
//!   usual, and the `|#` tags kept, as statsd_exporter does.
//! - **Sets**: the whole text between the name's `:` and the `|` is one member, verbatim, so
//!   `user:a:b|s` is the member `a:b` (statsd_exporter keeps set values verbatim too). A member
//!   need not be UTF-8; it is only compared.
//! - **Etsy multi-metric** (`a:1|c:2|g`): in a line without a `|#` section, a `:` directly after
//!   the type or after an `@rate` field starts the next sample of the same name. A `:` anywhere
//!   else in a field (`|c:container`, `|T…`, `|e:…`, tag values) belongs to that field. If this
//!   reading gives several samples and one of them carries a `|c:` container field, the line is
//!   read again without the rule (a container makes it a DogStatsD line): the `:` then belongs to
//!   the type or the rate, so `a:1|c:2|g|c:abc` is [`Reason::UnknownType`] (type `c:2`).
//! - **Fields**: `@rate` and `|c:` may repeat, the last one wins (as in the DogStatsD agent); a
//!   second `|#` section is `MalformedTags`, since two sections cannot be joined without
//!   allocating. `|T…`, `|e:…`, `|card:…` and unknown fields are ignored. An empty field (a line
//!   ending in `|`, or `||`) is [`Reason::MissingType`]: statsd_exporter refuses it too.
//! - **Tags**: an empty tag (`a:b,,c:d`, a trailing `,`) is skipped silently; a tag without its
//!   separator is one `TagWithoutValue`, an empty key or value one `EmptyTagValue`. A DogStatsD
//!   tag loses one leading `#` first (`|#a:b,#c:d` is `a` and `c`, as the PHP client means it and
//!   statsd_exporter reads it), so `#:v` has an empty key. An empty tag section gives
//!   [`Tags::NONE`].
//! - **Values** follow Rust's `f64` grammar, which for decimal text is Go's `ParseFloat`: `1`,
//!   `-1.5`, `1e3`, `.5`, `5.` are numbers; hex, underscores, spaces and empty text are
//!   [`Reason::InvalidValue`]; `nan`, `inf`, `infinity` (any case and sign) and values that
//!   overflow `f64` (`1e400`) are [`Reason::NonFiniteValue`]. A counter below zero is
//!   [`Reason::NegativeCounter`] (`-0` is accepted).
//! - **Line endings**: `parse_datagram` strips one `\r` at the end of every line, the last one
//!   included. `parse_line` takes the line as it is.
//!
//! # Speed
//!
//! The typical DogStatsD line costs about 845 instructions (callgrind, `benches/parse.rs`).
//! What that takes: one pass over the name with a byte-class table (which also proves an ASCII
//! name valid UTF-8, one of the two `unsafe` here), one pass over the tags that finds their end
//! and counts the tags to drop (16 bytes at a time with SSE2 on x86-64, the other `unsafe`), a
//! fast path for short decimals that gives the same bits as `str::parse` (and shorter ones for a
//! lone-digit value and `0.d`/`0.dd` rates), byte loops rather than `memchr` for the few-byte
//! runs inside a line, and no `Result<Value, _>` round trips through memory on the single-value
//! path. Names that hold a tag introducer or a bracket are split out of line
//! (`name_with_tags`); a plain name goes straight into a one-piece [`Name`].
//!
//! It is one file (over our usual 800 lines) on purpose: these fast paths hand each other their
//! positions on the per-line path, and they are checked by reading them together; the grammar's
//! table of cases lives in `tests/protocol.rs`, statsd_exporter's own tables (and where tallyd
//! differs from them on purpose) in `tests/statsd_exporter.rs`.

use memchr::{memchr, memchr_iter, memchr2};
use nom::{
    IResult, Parser,
    branch::alt,
    bytes::complete::tag,
    combinator::{map, value},
    sequence::{preceded, terminated},
};

use super::{
    Extension, MetricType, Name, ParseOptions, Reason, Sample, SampleSink, TagStyle, Tags, Value,
};

/// Lines longer than this are refused with [`Reason::LineTooLong`] before anything else is read.
/// Far above any UDP datagram a client sends by default, low enough to bound the work per line.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// nom results here carry no error detail: a failed sub-parser is mapped to a [`Reason`] by the
/// caller, which knows what was expected. `()` errors cost nothing to build.
type Res<'a, O> = IResult<&'a [u8], O, ()>;

/// Parse every line of a datagram, delivering results to `sink` in wire order.
pub fn parse_datagram(datagram: &[u8], options: &ParseOptions, sink: &mut impl SampleSink) {
    let newline = NewlineFinder::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let (line, next) = match newline.find(rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        parse_line(line, options, sink);
    }
}

/// Finds the `\n` that ends a line. On x86-64 this is `memchr`'s SSE2 searcher used directly:
/// `memchr` itself dispatches at run time to an AVX2 searcher, which for the few dozen bytes of a
/// datagram costs more in that dispatch and set-up than in searching.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
struct NewlineFinder(memchr::arch::x86_64::sse2::memchr::One);

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
impl NewlineFinder {
    #[inline]
    fn new() -> Self {
        // SSE2 is part of the x86-64 baseline, so the searcher is always available.
        NewlineFinder(memchr::arch::x86_64::sse2::memchr::One::new(b'\n').expect("SSE2"))
    }

    #[inline]
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        self.0.find(haystack)
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
struct NewlineFinder;

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
impl NewlineFinder {
    fn new() -> Self {
        NewlineFinder
    }

    #[inline]
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        memchr(b'\n', haystack)
    }
}

/// Parse one line (without its `\n`). An empty line yields nothing.
pub fn parse_line(line: &[u8], options: &ParseOptions, sink: &mut impl SampleSink) {
    if line.is_empty() {
        return;
    }
    sink.line();
    if line.len() > MAX_LINE_LEN {
        sink.reject(Reason::LineTooLong);
        return;
    }
    if line[0] == b'_' {
        if line.starts_with(b"_e{") {
            sink.extension(Extension::Event);
            return;
        }
        if line.starts_with(b"_sc|") {
            sink.extension(Extension::ServiceCheck);
            return;
        }
    }
    if let Err(reason) = read_line(line, options, sink) {
        sink.reject(reason);
    }
}

/// What every sample of a line shares.
struct Line<'a> {
    name: Name<'a>,
    tags: Tags<'a>,
    container_id: Option<&'a str>,
}

/// Read a line and deliver it. Everything is checked before the first call to `sink`, so a
/// refusal (the `Err`) leaves no trace but itself.
#[inline]
fn read_line<S: SampleSink>(
    line: &[u8],
    options: &ParseOptions,
    sink: &mut S,
) -> Result<(), Reason> {
    let (colon, seen) = scan_name(line)?;
    let (section, body) = (&line[..colon], &line[colon + 1..]);
    let (name, name_tags) = if seen & TAG_START == 0 {
        if section.is_empty() {
            return Err(Reason::EmptyName);
        }
        let name = if seen & NAME_HIGH == 0 {
            ascii(section)
        } else {
            utf8(section)?
        };
        (Name::new(name), None)
    } else {
        name_with_tags(section, seen)?
    };

    let mut first = Segment::EMPTY;
    let (segments, etsy) = match segment(body, true, &mut first)? {
        None => (1, true),
        Some(next) => several_segments(body, &mut first, next)?,
    };
    let (tags, tag_warnings) = match (first.tags, name_tags) {
        (Some(raw), Some(name_tags)) => mixed_tags(raw, first.tag_warnings, name_tags)?,
        (Some(raw), None) => (
            Tags {
                raw,
                style: TagStyle::DogStatsd,
            },
            first.tag_warnings,
        ),
        (None, Some(tags)) => (tags, check_name_tags(tags.raw)?),
        (None, None) => (Tags::NONE, TagWarnings::NONE),
    };
    let line = Line {
        name,
        tags: if tags.raw.is_empty() {
            Tags::NONE
        } else {
            tags
        },
        container_id: match first.container {
            None => None,
            Some(id) => Some(utf8(id)?),
        },
    };

    if segments == 1 {
        if first.is_packed() {
            let parsed = Packed::parse(&first)?;
            tag_warnings.report(sink);
            line.deliver_packed(&first, &parsed, options, sink);
        } else {
            // The common case: one value, parsed once, in place (a `Result<Value, _>` returned
            // through memory costs a store-forwarding stall here).
            let value = if first.metric_type == MetricType::Set {
                set_member(first.values)?
            } else {
                // A lone digit is a finite number of any type, and `parse_number`, which would
                // say so, is a call away.
                let number = match first.values {
                    &[digit @ b'0'..=b'9'] => f64::from(digit - b'0'),
                    values => parse_checked(values, first.metric_type)?,
                };
                typed(number, first.values, first.metric_type, options)
            };
            tag_warnings.report(sink);
            let sample_rate = first.sample_rate(sink);
            line.deliver(&first, sample_rate, value, sink);
        }
    } else {
        let segments = Segments::new(body, etsy);
        for segment in segments.clone() {
            check_values(&segment?, options)?;
        }
        tag_warnings.report(sink);
        // Every segment was checked above, so none of these can fail.
        for segment in segments.flatten() {
            line.deliver_values(&segment, options, sink);
        }
    }
    Ok(())
}

impl Line<'_> {
    /// Deliver every value of a checked segment.
    fn deliver_values(
        &self,
        segment: &Segment<'_>,
        options: &ParseOptions,
        sink: &mut impl SampleSink,
    ) {
        let sample_rate = segment.sample_rate(sink);
        if segment.metric_type == MetricType::Set {
            let member = Value::SetMember(segment.values);
            self.deliver(segment, sample_rate, member, sink);
            return;
        }
        for raw in Values::new(segment.values) {
            if let Ok(value) = parse_value(raw, segment.metric_type, options) {
                self.deliver(segment, sample_rate, value, sink);
            }
        }
    }

    /// Deliver the values of a checked packed segment, taking those already parsed from `parsed`.
    fn deliver_packed(
        &self,
        segment: &Segment<'_>,
        parsed: &Packed,
        options: &ParseOptions,
        sink: &mut impl SampleSink,
    ) {
        let sample_rate = segment.sample_rate(sink);
        let kept = &parsed.numbers[..parsed.len];
        for (i, raw) in Values::new(segment.values).enumerate() {
            let value = match kept.get(i) {
                Some(&number) => typed(number, raw, segment.metric_type, options),
                None => match parse_value(raw, segment.metric_type, options) {
                    Ok(value) => value,
                    Err(_) => continue,
                },
            };
            self.deliver(segment, sample_rate, value, sink);
        }
    }

    fn deliver(
        &self,
        segment: &Segment<'_>,
        sample_rate: f64,
        value: Value<'_>,
        sink: &mut impl SampleSink,
    ) {
        sink.sample(&Sample {
            name: self.name,
            metric_type: segment.metric_type,
            value,
            sample_rate,
            tags: self.tags,
            container_id: self.container_id,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The name and its embedded tags

/// Byte classes for [`scan_name`].
const NAME_END: u8 = 1;
const PIPE: u8 = 2;
const TAG_START: u8 = 4;
const NAME_HIGH: u8 = 8;

static NAME_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0x80;
    while b < 256 {
        class[b] = NAME_HIGH;
        b += 1;
    }
    class[b':' as usize] = NAME_END;
    class[b'|' as usize] = PIPE;
    class[b',' as usize] = TAG_START;
    class[b'#' as usize] = TAG_START;
    class[b'[' as usize] = TAG_START;
    class[b']' as usize] = TAG_START;
    class
};

/// Find the name's `:` in one pass, noting whether the name holds a tag introducer (or a `]`, which
/// decides whether a `,` or `#` is one) or a byte above
/// 0x7f (without one it is ASCII, so UTF-8 without a second look). A `|` before
/// any `:` (or no `:` at all) means the colon is missing. Names are short, so a byte loop beats
/// several `memchr` calls here.
#[inline]
fn scan_name(line: &[u8]) -> Result<(usize, u8), Reason> {
    let mut seen = 0;
    let mut i = 0;
    // Most name bytes are letters, digits, `.` and `_`: a tight loop skips them. Without the
    // class-0 test the loop tested each class bit in turn, 13 instructions a byte; as a `for`
    // over `enumerate` it still kept two counters, 9 a byte.
    while let Some(skip) = line[i..]
        .iter()
        .position(|&b| NAME_CLASS[usize::from(b)] != 0)
    {
        i += skip;
        let class = NAME_CLASS[usize::from(line[i])];
        if class & NAME_END != 0 {
            return Ok((i, seen));
        }
        if class & PIPE != 0 {
            break;
        }
        seen |= class;
        i += 1;
    }
    Err(Reason::MissingColon)
}

/// The name and name-tag section of the text before the `:` of a line that holds a tag introducer
/// or a bracket (`seen` is what [`scan_name`] saw). Out of line: most names hold none.
#[inline(never)]
fn name_with_tags(section: &[u8], seen: u8) -> Result<(Name<'_>, Option<Tags<'_>>), Reason> {
    let (head, tail, tags) = split_name(section);
    if head.is_empty() {
        return Err(Reason::EmptyName);
    }
    let name = if seen & NAME_HIGH == 0 {
        Name::joined(ascii(head), ascii(tail))
    } else {
        Name::joined(utf8(head)?, utf8(tail)?)
    };
    Ok((name, tags))
}

/// Split the text before the name's `:` into the name (its head and its tail, the tail empty but
/// for a SignalFX section inside the name) and its embedded tag section. The head is empty only
/// when the whole name is.
fn split_name(section: &[u8]) -> (&[u8], &[u8], Option<Tags<'_>>) {
    match (memchr(b'[', section), memchr(b']', section)) {
        (None, None) => {}
        (Some(open), Some(close)) if open < close => {
            let raw = &section[open + 1..close];
            let (head, tail) = match (&section[..open], &section[close + 1..]) {
                (b"", tail) => (tail, &b""[..]),
                pieces => pieces,
            };
            let style = TagStyle::SignalFx;
            return (head, tail, Some(Tags { raw, style }));
        }
        // One kind of bracket only, or `]` first: the whole text is the name.
        _ => return (section, b"", None),
    }
    let Some(start) = memchr2(b',', b'#', section) else {
        return (section, b"", None);
    };
    let style = match section[start] {
        b',' => TagStyle::Influx,
        _ => TagStyle::Librato,
    };
    let raw = &section[start + 1..];
    (&section[..start], b"", Some(Tags { raw, style }))
}

/// The tags of a line with both `|#` tags and name tags: refused when the name tags give a label
/// (one style per line); otherwise the `|#` tags, with the name tags' drops counted too.
#[cold]
#[inline(never)]
fn mixed_tags<'a>(
    raw: &'a [u8],
    warnings: TagWarnings,
    name_tags: Tags<'a>,
) -> Result<(Tags<'a>, TagWarnings), Reason> {
    let name_warnings = check_name_tags(name_tags.raw)?;
    if name_tags.iter().next().is_some() {
        return Err(Reason::MalformedTags);
    }
    let tags = Tags {
        raw,
        style: TagStyle::DogStatsd,
    };
    let warnings = TagWarnings {
        without_value: warnings.without_value + name_warnings.without_value,
        empty: warnings.empty + name_warnings.empty,
    };
    Ok((tags, warnings))
}

// ---------------------------------------------------------------------------------------------
// The body: segments and fields

/// One `value *(":" value) "|" type *("|" field)` run of a line.
#[derive(Clone, Copy, Debug)]
struct Segment<'a> {
    /// The value text, `:`-separated when packed.
    values: &'a [u8],
    metric_type: MetricType,
    /// The text after the last `@`, unparsed.
    rate: Option<&'a [u8]>,
    /// The text after `#`, checked to be UTF-8.
    tags: Option<&'a [u8]>,
    /// What [`scan_tags`] found in `tags`.
    tag_warnings: TagWarnings,
    /// The text after the last `c:`, never empty.
    container: Option<&'a [u8]>,
}

impl Segment<'_> {
    /// Whether the segment holds more than one value (a set's value is always one member).
    #[inline]
    fn is_packed(&self) -> bool {
        // A lone byte (the `1` of most counters) is tested here: the call to `find` costs more.
        self.metric_type != MetricType::Set
            && match self.values {
                [only] => *only == b':',
                values => find(b':', values).is_some(),
            }
    }

    /// The segment's rate, or 1 after reporting an invalid one.
    #[inline]
    fn sample_rate(&self, sink: &mut impl SampleSink) -> f64 {
        match self.rate.map(sample_rate) {
            None => 1.0,
            Some(Some(rate)) => rate,
            Some(None) => {
                sink.reject(Reason::InvalidSampleRate);
                1.0
            }
        }
    }

    const EMPTY: Segment<'static> = Segment {
        values: b"",
        metric_type: MetricType::Counter,
        rate: None,
        tags: None,
        tag_warnings: TagWarnings::NONE,
        container: None,
    };
}

/// The rest of a body that the Etsy reading split after its `first` segment, at `next`. Returns
/// the segment count and whether the Etsy rule stays on. It does not when a later segment carries
/// `|c:` (or `|#`), or when the Etsy reading fails in a line that has a `|#` section: the line is
/// then read again as DogStatsD, as one segment, into `first`.
#[cold]
#[inline(never)]
fn several_segments<'a>(
    body: &'a [u8],
    first: &mut Segment<'a>,
    next: &'a [u8],
) -> Result<(usize, bool), Reason> {
    // The first segment has no tags: a `#` field turns the Etsy rule off, so it would not split.
    let mut dogstatsd = first.container.is_some();
    let mut count = 1;
    let mut rest = Some(next);
    let mut current = Segment::EMPTY;
    let outcome = loop {
        let Some(input) = rest else { break Ok(()) };
        count += 1;
        match segment(input, true, &mut current) {
            Ok(next) => rest = next,
            Err(reason) => break Err(reason),
        }
        dogstatsd |= current.container.is_some() || current.tags.is_some();
    };
    match outcome {
        Ok(()) if !dogstatsd => Ok((count, true)),
        Err(reason) if !has_tag_field(body) => Err(reason),
        _ => {
            // Without the Etsy rule there is no next segment.
            segment(body, false, first)?;
            Ok((1, false))
        }
    }
}

/// Iterates the segments of a body; with `etsy` off there is exactly one.
#[derive(Clone)]
struct Segments<'a> {
    rest: Option<&'a [u8]>,
    etsy: bool,
}

impl<'a> Segments<'a> {
    fn new(body: &'a [u8], etsy: bool) -> Self {
        Segments {
            rest: Some(body),
            etsy,
        }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<Segment<'a>, Reason>;

    fn next(&mut self) -> Option<Self::Item> {
        let input = self.rest.take()?;
        let mut out = Segment::EMPTY;
        Some(segment(input, self.etsy, &mut out).map(|next| {
            self.rest = next;
            out
        }))
    }
}

/// A field after the type.
#[derive(Clone, Copy, Debug)]
enum Field<'a> {
    Rate(&'a [u8]),
    Tags(&'a [u8], TagScan),
    /// `c:<id>`; empty for a bare `c` or `c:`.
    Container(&'a [u8]),
    /// `T<secs>`, `e:…`, `card:…`, empty and unknown fields.
    Ignored,
    /// Nothing between two `|` or after the last one.
    Empty,
}

/// Read one segment into `out`; return where the next one starts (after an Etsy `:`), if anywhere.
fn segment<'a>(
    input: &'a [u8],
    mut etsy: bool,
    out: &mut Segment<'a>,
) -> Result<Option<&'a [u8]>, Reason> {
    let (rest, values) = till_pipe(input).map_err(|_| Reason::MissingType)?;
    let (mut rest, type_name) = preceded(pipe, token(etsy))
        .parse(rest)
        .map_err(|_| Reason::MissingType)?;
    *out = Segment {
        values,
        metric_type: metric_type(type_name)?,
        ..Segment::EMPTY
    };
    loop {
        // Here `rest` is empty, starts with `|`, or (after the type or a rate) with an Etsy `:`.
        let next_field = match rest {
            [] => return Ok(None),
            [b':', next @ ..] => return Ok(Some(next)),
            _ => preceded(pipe, field(etsy)).parse(rest),
        };
        // `field` ends in a parser that accepts anything, so only a missing `|` can fail here,
        // and `token` never stops anywhere but at `|`, `:` or the end.
        let (next, field) = next_field.map_err(|_| Reason::MissingType)?;
        match field {
            Field::Rate(rate) => out.rate = Some(rate),
            Field::Tags(tags, scan) => {
                if out.tags.replace(tags).is_some() {
                    return Err(Reason::MalformedTags);
                }
                if scan.non_ascii {
                    utf8(tags)?;
                }
                out.tag_warnings = scan.warnings;
                // No Etsy split in a line with DogStatsD tags. Had there been one earlier in
                // this segment, `segment` would already have returned.
                etsy = false;
            }
            Field::Container([]) => return Err(Reason::EmptyContainerId),
            Field::Container(id) => out.container = Some(id),
            Field::Ignored => {}
            // statsd_exporter refuses `a:1|c|` and `a:1|c||@0.5` too.
            Field::Empty => return Err(Reason::MissingType),
        }
        rest = next;
    }
}

/// `field = "@" rate | "#" tags | "c:" container | "c" | other`
fn field<'a>(etsy: bool) -> impl Parser<&'a [u8], Output = Field<'a>, Error = ()> {
    alt((
        map(preceded(sigil(b'@'), token(etsy)), Field::Rate),
        map(preceded(sigil(b'#'), dogstatsd_tags), |(tags, scan)| {
            Field::Tags(tags, scan)
        }),
        map(preceded(tag(&b"c:"[..]), till_pipe), Field::Container),
        value(Field::Container(b""), terminated(sigil(b'c'), field_end)),
        map(till_pipe, |field: &[u8]| match field {
            [] => Field::Empty,
            _ => Field::Ignored,
        }),
    ))
}

/// The `|` before a type or a field.
fn pipe(input: &[u8]) -> Res<'_, ()> {
    sigil(b'|')(input)
}

/// One given byte.
fn sigil<'a>(expected: u8) -> impl Fn(&'a [u8]) -> Res<'a, ()> {
    move |input| match input {
        [first, rest @ ..] if *first == expected => Ok((rest, ())),
        _ => Err(nom::Err::Error(())),
    }
}

/// A `|#` section, up to the next `|`; scanned for its tags on the way.
fn dogstatsd_tags(input: &[u8]) -> Res<'_, (&[u8], TagScan)> {
    let (end, scan) = scan_tags(input, TagStyle::DogStatsd);
    Ok((&input[end..], (&input[..end], scan)))
}

/// The text up to the next `|` (or the end).
fn till_pipe(input: &[u8]) -> Res<'_, &[u8]> {
    let end = find(b'|', input).unwrap_or(input.len());
    Ok((&input[end..], &input[..end]))
}

/// A type or a rate: up to the next `|`, or also `:` when the Etsy rule is on.
fn token<'a>(etsy: bool) -> impl Fn(&'a [u8]) -> Res<'a, &'a [u8]> {
    move |input| {
        let end = if etsy {
            find2(b'|', b':', input)
        } else {
            find(b'|', input)
        };
        let end = end.unwrap_or(input.len());
        Ok((&input[end..], &input[..end]))
    }
}

/// Succeeds, consuming nothing, at the end of a field.
fn field_end(input: &[u8]) -> Res<'_, ()> {
    match input.first() {
        None | Some(b'|') => Ok((input, ())),
        Some(_) => Err(nom::Err::Error(())),
    }
}

fn metric_type(name: &[u8]) -> Result<MetricType, Reason> {
    Ok(match name {
        b"c" => MetricType::Counter,
        b"g" => MetricType::Gauge,
        b"ms" => MetricType::Timer,
        b"h" => MetricType::Histogram,
        b"d" => MetricType::Distribution,
        b"s" => MetricType::Set,
        b"" => return Err(Reason::MissingType),
        _ => return Err(Reason::UnknownType),
    })
}

/// Whether the body has a DogStatsD `|#` section, which turns the Etsy rule off.
fn has_tag_field(body: &[u8]) -> bool {
    memchr_iter(b'#', body).any(|i| i > 0 && body[i - 1] == b'|')
}

// ---------------------------------------------------------------------------------------------
// Tags

/// Tags dropped from a kept line, to be reported when it is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TagWarnings {
    without_value: u32,
    empty: u32,
}

impl TagWarnings {
    const NONE: TagWarnings = TagWarnings {
        without_value: 0,
        empty: 0,
    };

    /// Report the dropped tags. Inline for the usual case of none, where the out-of-line loops
    /// cost a call for nothing.
    #[inline(always)]
    fn report(self, sink: &mut impl SampleSink) {
        if self != TagWarnings::NONE {
            self.report_some(sink);
        }
    }

    #[cold]
    #[inline(never)]
    fn report_some(self, sink: &mut impl SampleSink) {
        for _ in 0..self.without_value {
            sink.reject(Reason::TagWithoutValue);
        }
        for _ in 0..self.empty {
            sink.reject(Reason::EmptyTagValue);
        }
    }
}

/// What one pass over a tag section found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TagScan {
    warnings: TagWarnings,
    /// A byte above 0x7f: the section must be checked for UTF-8.
    non_ascii: bool,
}

/// Byte classes for [`scan_tags`].
const TAG_COMMA: u8 = 1;
const TAG_COLON: u8 = 2;
const TAG_EQUALS: u8 = 4;
const TAG_END: u8 = 8;
const TAG_HIGH: u8 = 16;

static TAG_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    class[b',' as usize] = TAG_COMMA;
    class[b':' as usize] = TAG_COLON;
    class[b'=' as usize] = TAG_EQUALS;
    class[b'|' as usize] = TAG_END;
    let mut b = 0x80;
    while b < 256 {
        class[b] = TAG_HIGH;
        b += 1;
    }
    class
};

/// Scan a tag section up to the next `|` (or the end) in one pass over its bytes: where it ends,
/// and how many of its tags will be dropped. On x86-64, sections of 16 bytes or more (the usual
/// `env:prod,service:web` already is) are read 16 bytes at a time with SSE2, part of the x86-64
/// baseline: a few vector compares find every separator of a block, so the letters between them,
/// most of a section, cost a fraction of an instruction each instead of the byte loop's eight.
/// `memchr` per tag and per separator would cost more in dispatch than tags are long.
fn scan_tags(input: &[u8], style: TagStyle) -> (usize, TagScan) {
    let separator = match style {
        TagStyle::DogStatsd => b':',
        _ => b'=',
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if input.len() >= 16 {
        debug_assert!(std::arch::is_x86_feature_detected!("sse2"));
        // SAFETY: `scan_tags_sse2` needs nothing but SSE2, and this call is compiled only when
        // the build targets SSE2 (every x86-64 target does: it is part of the baseline), so the
        // CPU running this code has it (re-checked above in debug builds). The function itself
        // is safe code: `unsafe` only vouches for the target feature.
        return unsafe { scan_tags_sse2(input, separator) };
    }
    scan_tags_bytes(input, separator)
}

/// The tags dropped from a section, counted as its separators go by in order.
struct TagCounter<'a> {
    /// The section.
    input: &'a [u8],
    /// A DogStatsD section: a tag's leading `#` is not part of its key.
    hash_prefix: bool,
    warnings: TagWarnings,
    /// Where the current tag starts.
    start: usize,
    /// The current tag's first key/value separator.
    separator_at: Option<usize>,
}

impl<'a> TagCounter<'a> {
    fn new(input: &'a [u8], separator: u8) -> Self {
        TagCounter {
            input,
            hash_prefix: separator == b':',
            warnings: TagWarnings::NONE,
            start: 0,
            separator_at: None,
        }
    }

    /// Whether the key of a tag whose separator is at `at` is empty: nothing before the
    /// separator, or (DogStatsD) only the `#` that [`Tags::iter`] drops.
    #[inline(always)]
    fn empty_key(&self, at: usize) -> bool {
        at == self.start
            || (at == self.start + 1 && self.hash_prefix && self.input[self.start] == b'#')
    }

    /// A key/value separator at `i`; only a tag's first one splits it.
    #[inline(always)]
    fn separator(&mut self, i: usize) {
        self.separator_at = self.separator_at.or(Some(i));
    }

    /// The tag ending at `end` (a `,` or the section's end); an empty one is no tag.
    #[inline(always)]
    fn tag_end(&mut self, end: usize) {
        match self.separator_at {
            _ if self.start == end => {}
            None => self.warnings.without_value += 1,
            Some(at) if self.empty_key(at) || at + 1 == end => self.warnings.empty += 1,
            Some(_) => {}
        }
        (self.start, self.separator_at) = (end + 1, None);
    }
}

/// [`scan_tags`] one byte at a time, with a class table.
fn scan_tags_bytes(input: &[u8], separator: u8) -> (usize, TagScan) {
    let mut counter = TagCounter::new(input, separator);
    let separator = TAG_CLASS[usize::from(separator)];
    let mut high = 0;
    let mut end = input.len();
    for (i, &b) in input.iter().enumerate() {
        let class = TAG_CLASS[usize::from(b)];
        if class == 0 {
            continue;
        }
        if class & TAG_COMMA != 0 {
            counter.tag_end(i);
        } else if class & separator != 0 {
            counter.separator(i);
        } else if class & TAG_END != 0 {
            end = i;
            break;
        }
        high |= class;
    }
    counter.tag_end(end);
    let scan = TagScan {
        warnings: counter.warnings,
        non_ascii: high & TAG_HIGH != 0,
    };
    (end, scan)
}

/// [`scan_tags`] 16 bytes at a time, for sections of at least 16 bytes. Each block becomes bit
/// masks (bit `k` for the block's byte `k`) of its commas, separators, `|` and high bytes; only the
/// marked bytes are then visited, in order. The last block is the section's last 16 bytes, which
/// overlap the block before: the bytes already seen are shifted out of its masks.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn scan_tags_sse2(input: &[u8], separator: u8) -> (usize, TagScan) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set_epi64x, _mm_set1_epi8,
    };
    debug_assert!(input.len() >= 16);
    // Two `u64`s rather than `_mm_loadu_si128`, which takes a raw pointer: no `unsafe`, and the
    // compiler still emits one unaligned 16-byte load.
    let block = |at: usize| {
        let bytes: &[u8; 16] = input[at..at + 16].try_into().expect("sixteen bytes");
        let (low, high) = bytes.split_at(8);
        let half = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("eight bytes"));
        _mm_set_epi64x(half(high).cast_signed(), half(low).cast_signed())
    };
    let equal = |block: __m128i, byte: u8| {
        _mm_movemask_epi8(_mm_cmpeq_epi8(block, _mm_set1_epi8(byte.cast_signed()))).cast_unsigned()
    };
    let mut counter = TagCounter::new(input, separator);
    let mut high = 0;
    let mut offset = 0;
    let end = loop {
        let (at, seen) = match input.len() - offset {
            16.. => (offset, 0),
            left => (input.len() - 16, 16 - left),
        };
        let block = block(at);
        let commas = equal(block, b',') >> seen;
        let pipes = equal(block, b'|') >> seen;
        // Only the bytes before the first `|` belong to the section.
        let section = match pipes {
            0 => u32::MAX,
            _ => (pipes & pipes.wrapping_neg()) - 1,
        };
        high |= (_mm_movemask_epi8(block).cast_unsigned() >> seen) & section;
        let mut marks = (commas | equal(block, separator) >> seen) & section;
        while marks != 0 {
            let bit = marks.trailing_zeros();
            let i = offset + bit as usize;
            if commas & (1 << bit) != 0 {
                counter.tag_end(i);
            } else {
                counter.separator(i);
            }
            marks &= marks - 1;
        }
        if pipes != 0 {
            break offset + pipes.trailing_zeros() as usize;
        }
        offset += 16;
        if offset >= input.len() {
            break input.len();
        }
    };
    counter.tag_end(end);
    let scan = TagScan {
        warnings: counter.warnings,
        non_ascii: high != 0,
    };
    (end, scan)
}

/// Check a name-embedded tag section: UTF-8 (or the line is refused) and the tags to drop.
fn check_name_tags(raw: &[u8]) -> Result<TagWarnings, Reason> {
    let (_, scan) = scan_tags(raw, TagStyle::Influx);
    if scan.non_ascii {
        utf8(raw)?;
    }
    Ok(scan.warnings)
}

// ---------------------------------------------------------------------------------------------
// Values and rates

/// Iterates the `:`-separated values of a segment.
struct Values<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Values<'a> {
    fn new(values: &'a [u8]) -> Self {
        Values { rest: Some(values) }
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match find(b':', rest) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// The first numbers of a packed segment, parsed while the segment is checked so that delivering
/// them does not parse them again; numbers beyond these are parsed twice.
struct Packed {
    numbers: [f64; PACKED_KEPT],
    len: usize,
}

/// How many parsed numbers of a packed line are kept on the stack.
const PACKED_KEPT: usize = 16;

impl Packed {
    /// Check every value of a packed numeric segment.
    fn parse(segment: &Segment<'_>) -> Result<Self, Reason> {
        let mut packed = Packed {
            numbers: [0.0; PACKED_KEPT],
            len: 0,
        };
        for raw in Values::new(segment.values) {
            let number = parse_checked(raw, segment.metric_type)?;
            if let Some(slot) = packed.numbers.get_mut(packed.len) {
                *slot = number;
                packed.len += 1;
            }
        }
        Ok(packed)
    }
}

/// Check every value of a segment.
fn check_values(segment: &Segment<'_>, options: &ParseOptions) -> Result<(), Reason> {
    if segment.metric_type == MetricType::Set {
        return parse_value(segment.values, MetricType::Set, options).map(drop);
    }
    for raw in Values::new(segment.values) {
        parse_value(raw, segment.metric_type, options)?;
    }
    Ok(())
}

#[inline]
fn parse_value<'a>(
    raw: &'a [u8],
    metric_type: MetricType,
    options: &ParseOptions,
) -> Result<Value<'a>, Reason> {
    if metric_type == MetricType::Set {
        return set_member(raw);
    }
    let number = parse_checked(raw, metric_type)?;
    Ok(typed(number, raw, metric_type, options))
}

fn set_member(raw: &[u8]) -> Result<Value<'_>, Reason> {
    if raw.is_empty() {
        Err(Reason::InvalidValue)
    } else {
        Ok(Value::SetMember(raw))
    }
}

/// The number in `raw`, if it is one the type accepts.
#[inline(always)]
fn parse_checked(raw: &[u8], metric_type: MetricType) -> Result<f64, Reason> {
    let number = parse_number(raw).ok_or(Reason::InvalidValue)?;
    if !number.is_finite() {
        return Err(Reason::NonFiniteValue);
    }
    if metric_type == MetricType::Counter && number < 0.0 {
        return Err(Reason::NegativeCounter);
    }
    Ok(number)
}

/// The value of a checked number `raw` of a numeric type.
#[inline]
fn typed(
    number: f64,
    raw: &[u8],
    metric_type: MetricType,
    options: &ParseOptions,
) -> Value<'static> {
    if metric_type == MetricType::Gauge && options.gauge_deltas && matches!(raw[0], b'+' | b'-') {
        Value::GaugeDelta(number)
    } else {
        Value::Number(number)
    }
}

/// A decimal number as Go's `strconv.ParseFloat` reads it. Non-finite results are returned; the
/// caller decides what they mean.
#[inline]
fn parse_number(raw: &[u8]) -> Option<f64> {
    // A lone digit (the `1` of most counters) is exact as it is; `fast_decimal`'s general loop
    // costs about 40 instructions even for one byte.
    if let &[digit @ b'0'..=b'9'] = raw {
        return Some(f64::from(digit - b'0'));
    }
    fast_decimal(raw).or_else(|| std::str::from_utf8(raw).ok()?.parse().ok())
}

/// `[+-]digits[.digits]` with at most 15 digits in all: the digits form an integer below 2^53 and
/// the scale a power of ten that `f64` holds exactly, so one division gives the correctly rounded
/// result, the same bits as `str::parse` (Clinger's fast path). Anything else is left to `std`.
#[inline]
fn fast_decimal(raw: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, raw),
    };
    if digits.len() > 16 {
        return None;
    }
    let (mut mantissa, mut point) = (0u64, None);
    for (i, &b) in digits.iter().enumerate() {
        let digit = b.wrapping_sub(b'0');
        if digit < 10 {
            mantissa = mantissa * 10 + u64::from(digit);
        } else if b == b'.' && point.is_none() {
            point = Some(i);
        } else {
            return None;
        }
    }
    let count = digits.len() - usize::from(point.is_some());
    if count == 0 || count > 15 {
        return None;
    }
    let scale = point.map_or(0, |at| digits.len() - 1 - at);
    // Below 10^15, so the `i64` conversion (one instruction, unlike `u64`'s) is exact.
    let mut value = mantissa as i64 as f64;
    if scale > 0 {
        value /= POW10[scale];
    }
    Some(if negative { -value } else { value })
}

/// A sample rate in (0, 1], or `None` for anything else.
#[inline]
fn sample_rate(raw: &[u8]) -> Option<f64> {
    // Clients send short rates such as `0.5`, `0.1`, `0.25` or `0.01`: one or two digits after
    // `0.`. For these `fast_decimal` computes the digits as an integer divided by 10 or 100; doing
    // the same division here gives the same bits without its general loop (about 60 instructions).
    let digit = |b: u8| b.wrapping_sub(b'0');
    let rate = match *raw {
        [b'0', b'.', d] if digit(d) < 10 => f64::from(digit(d)) / 1e1,
        [b'0', b'.', d1, d2] if digit(d1) < 10 && digit(d2) < 10 => {
            f64::from(digit(d1) * 10 + digit(d2)) / 1e2
        }
        _ => parse_number(raw)?,
    };
    (rate > 0.0 && rate <= 1.0).then_some(rate)
}

/// Runs inside a line (values, types, rates) are a few bytes long: a byte loop finds their end
/// sooner than `memchr`'s dispatch; `memchr` takes over for whatever lies beyond this many bytes.
const SHORT: usize = 16;

/// The first `needle` in `haystack`.
#[inline]
fn find(needle: u8, haystack: &[u8]) -> Option<usize> {
    let head = &haystack[..haystack.len().min(SHORT)];
    match head.iter().position(|&b| b == needle) {
        Some(i) => Some(i),
        None if haystack.len() <= SHORT => None,
        None => memchr(needle, &haystack[SHORT..]).map(|i| i + SHORT),
    }
}

/// The first `a` or `b` in `haystack`.
#[inline]
fn find2(a: u8, b: u8, haystack: &[u8]) -> Option<usize> {
    let head = &haystack[..haystack.len().min(SHORT)];
    match head.iter().position(|&c| c == a || c == b) {
        Some(i) => Some(i),
        None if haystack.len() <= SHORT => None,
        None => memchr2(a, b, &haystack[SHORT..]).map(|i| i + SHORT),
    }
}

/// Bytes that [`scan_name`] has seen to be ASCII, as a `&str`.
fn ascii(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: every byte is below 0x80 (seen by `scan_name`, re-checked above in debug builds),
    // and ASCII is valid UTF-8. `from_utf8` would read the name a second time on the hot path.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

fn utf8(bytes: &[u8]) -> Result<&str, Reason> {
    std::str::from_utf8(bytes).map_err(|_| Reason::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    //! Internals only; the behaviour is specified by `tests/protocol.rs`.
    use super::*;

    #[test]
    fn fast_decimal_path_agrees_with_std() {
        for text in [
            "0",
            "1",
            "007",
            "-0",
            "+0.5",
            ".5",
            "5.",
            ".",
            "-",
            "+",
            "1.2.3",
            "0.1",
            "0.3",
            "12.5",
            "-3",
            "123456789012345",
            "1234567890123456",
            "9007199254740993",
            "1.000000000000001",
            "0.000000000000001",
            "123456789.012345",
            "1e3",
            "nan",
            "-inf",
        ] {
            assert_eq!(
                parse_number(text.as_bytes()).map(f64::to_bits),
                text.parse::<f64>().ok().map(f64::to_bits),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_decimal_path_matches_std_bit_for_bit(text in "[+-]?[0-9]{0,10}(\\.[0-9]{0,10})?") {
            proptest::prop_assert_eq!(
                parse_number(text.as_bytes()).map(f64::to_bits),
                text.parse::<f64>().ok().map(f64::to_bits)
            );
        }
    }

    /// Every input of `sample_rate`'s fast path (`0.d`, `0.dd`) against `str::parse`.
    #[test]
    fn sample_rate_short_forms_match_std() {
        let digits = || (b'0'..=b'9').map(char::from);
        let texts = digits()
            .map(|a| format!("0.{a}"))
            .chain(digits().flat_map(|a| digits().map(move |b| format!("0.{a}{b}"))));
        for text in texts {
            let expected = text.parse::<f64>().ok().filter(|&r| r > 0.0 && r <= 1.0);
            assert_eq!(
                sample_rate(text.as_bytes()).map(f64::to_bits),
                expected.map(f64::to_bits),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        /// The SSE2 tag scan against the byte loop it replaces: same end, same counts, same UTF-8
        /// flag, wherever the separators, `|` and high bytes fall relative to the 16-byte blocks.
        #[test]
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        fn tag_scan_sse2_matches_byte_loop(
            text in proptest::collection::vec(
                proptest::sample::select(&b"ab:=,,|\xc3\xa9"[..]), 16..80),
            influx: bool,
        ) {
            let separator = if influx { b'=' } else { b':' };
            // SAFETY: this test is compiled only for targets with SSE2.
            let sse2 = unsafe { scan_tags_sse2(&text, separator) };
            proptest::prop_assert_eq!(sse2, scan_tags_bytes(&text, separator));
        }
    }

    #[test]
    fn segments_split_only_after_type_or_rate() {
        let count = |body: &[u8]| Segments::new(body, true).count();
        assert_eq!(count(b"1|c:2|g"), 2);
        assert_eq!(count(b"1|c|@0.5:2|g"), 2);
        assert_eq!(count(b"1|c|c:abc"), 1);
        assert_eq!(count(b"1|c|T1:2|g"), 1);
    }
}
