//! A strict checker of rendered scrapes, shared by the fuzz targets (fuzz/src/lib.rs includes
//! this file) and the parse → expose → re-parse property test (tests/roundtrip.rs): one reader
//! of what tallyd writes, the text format 0.0.4 and OpenMetrics 1.0.0 without exemplars or
//! timestamps (tallyd writes neither).

use std::collections::{HashMap, HashSet};

use tallyd::exposition::Format;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Type {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

struct Family<'a> {
    name: &'a str,
    kind: Type,
    /// A sample was seen (a UNIT line must come before the first).
    sampled: bool,
}

/// Label pairs, unescaped.
type Labels<'a> = Vec<(&'a str, String)>;

/// One parsed sample line.
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Labels<'a>,
    pub value: f64,
}

/// Checks a rendered scrape, strictly, as the format it claims to be:
///
/// - UTF-8, every line ending in `\n`; OpenMetrics ends with `# EOF\n` and has no other `# EOF`;
/// - comments are `# HELP <name> <escaped text>`, `# TYPE <name> counter|gauge|histogram|summary` (one
///   per family name) or, in OpenMetrics, `# UNIT <family> <unit>` with the family name ending
///   in `_<unit>`, before the family's first sample;
/// - every other line is `name{label="value",...} value` with a valid metric name, valid and
///   distinct label names, only the `\\`, `\"`, `\n` escapes, and a Go-parsable float;
/// - every sample belongs to the family of the `# TYPE` line above it (`x_total`/`x_created`
///   for OpenMetrics counters, `_bucket`/`_sum`/`_count`/`_created` for histograms, the bare
///   name with `quantile`, `_sum`/`_count`/`_created` for summaries);
/// - no two samples have the same name and labels; `le` appears on exactly the `_bucket`
///   samples and `quantile` on exactly a summary's bare-name samples, in [0, 1]; a summary's
///   `_count` is a non-negative integer; counters are never negative or NaN; a histogram's
///   buckets are cumulative and end in `+Inf` with the value of `_count`; OpenMetrics `le`
///   values are canonical floats.
///
/// Returns every sample, in order.
pub fn check_scrape(out: &[u8], format: Format) -> Result<Vec<Sample<'_>>, String> {
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("does not end in a newline".into());
    }
    let body = match format {
        Format::OpenMetrics => text
            .strip_suffix("# EOF\n")
            .ok_or("OpenMetrics without a final # EOF")?,
        Format::Text => text,
        Format::Protobuf => return Err("protobuf is not a text format".into()),
    };

    let mut families: HashSet<&str> = HashSet::new();
    let mut family: Option<Family> = None;
    let mut seen: HashSet<(String, Labels)> = HashSet::new();
    let mut samples = Vec::new();
    // Histogram state per label set (without le): last cumulative count, +Inf count.
    let mut buckets: HashMap<Labels, (f64, Option<f64>)> = HashMap::new();

    for (number, line) in body.split_terminator('\n').enumerate() {
        let context = |problem: String| format!("line {}: {problem}: {line:?}", number + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment
                .strip_prefix(' ')
                .ok_or_else(|| context("comment without a space".into()))?;
            if let Some(rest) = comment.strip_prefix("HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_metric_name(name).map_err(context)?;
                check_help(help, format).map_err(context)?;
            } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| context("TYPE without a type".into()))?;
                check_metric_name(name).map_err(context)?;
                let kind = match kind {
                    "counter" => Type::Counter,
                    "gauge" => Type::Gauge,
                    "histogram" => Type::Histogram,
                    "summary" => Type::Summary,
                    other => return Err(context(format!("unexpected type {other:?}"))),
                };
                if !families.insert(name) {
                    return Err(context(format!("second TYPE line for {name}")));
                }
                family = Some(Family {
                    name,
                    kind,
                    sampled: false,
                });
                buckets.clear();
            } else if let Some(rest) = comment.strip_prefix("UNIT ") {
                if format != Format::OpenMetrics {
                    return Err(context("UNIT in the text format".into()));
                }
                let (name, unit) = rest
                    .split_once(' ')
                    .ok_or_else(|| context("UNIT without a unit".into()))?;
                let current = family
                    .as_ref()
                    .ok_or_else(|| context("UNIT before TYPE".into()))?;
                if current.name != name || current.sampled {
                    return Err(context("UNIT not right after its family's TYPE".into()));
                }
                if unit.is_empty()
                    || !unit.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    || !name.ends_with(&format!("_{unit}"))
                {
                    return Err(context("invalid unit, or a name without its unit".into()));
                }
            } else {
                return Err(context("unexpected comment".into()));
            }
            continue;
        }

        let sample = parse_sample(line).map_err(context)?;
        let family = family
            .as_mut()
            .ok_or_else(|| context("sample before any TYPE".into()))?;
        family.sampled = true;
        let suffix = sample_suffix(family, sample.name, format)
            .ok_or_else(|| context(format!("not a sample of {} {:?}", family.name, family.kind)))?;

        let mut names: Vec<&str> = sample.labels.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(context("duplicate label name".into()));
        }
        let has_le = names.contains(&"le");
        if has_le != (suffix == "_bucket") {
            return Err(context(
                "le on a non-bucket sample, or a bucket without le".into(),
            ));
        }
        let is_quantile = family.kind == Type::Summary && suffix.is_empty();
        if names.contains(&"quantile") != is_quantile {
            return Err(context(
                "quantile on a sample that is not a summary's quantile, or missing".into(),
            ));
        }
        if is_quantile {
            let (_, q) = sample
                .labels
                .iter()
                .find(|(n, _)| *n == "quantile")
                .unwrap();
            let q = parse_value(q).map_err(context)?;
            if !(0.0..=1.0).contains(&q) {
                return Err(context(format!("quantile {q} outside [0, 1]")));
            }
        }
        if family.kind == Type::Summary
            && suffix == "_count"
            && !(sample.value >= 0.0 && sample.value.fract() == 0.0)
        {
            return Err(context("a summary's _count is not a count".into()));
        }
        let mut key = sample.labels.clone();
        key.sort();
        if !seen.insert((sample.name.to_owned(), key.clone())) {
            return Err(context("duplicate series".into()));
        }

        if family.kind == Type::Counter
            && suffix != "_created"
            && (sample.value.is_nan() || sample.value < 0.0)
        {
            return Err(context("negative or NaN counter".into()));
        }
        if family.kind == Type::Histogram {
            let le = sample
                .labels
                .iter()
                .find(|(n, _)| *n == "le")
                .map(|(_, v)| v.clone());
            key.retain(|(n, _)| *n != "le");
            let state = buckets.entry(key).or_insert((0.0, None));
            match suffix {
                "_bucket" => {
                    let le = le.unwrap_or_default();
                    check_le(&le, format).map_err(context)?;
                    if state.1.is_some() {
                        return Err(context("bucket after +Inf".into()));
                    }
                    if sample.value < state.0 {
                        return Err(context("buckets are not cumulative".into()));
                    }
                    state.0 = sample.value;
                    if le == "+Inf" {
                        state.1 = Some(sample.value);
                    }
                }
                "_count" if state.1 != Some(sample.value) => {
                    return Err(context("_count is not the +Inf bucket".into()));
                }
                _ => {}
            }
        }
        samples.push(sample);
    }
    if format == Format::OpenMetrics && body.contains("# EOF") {
        return Err("a second # EOF".into());
    }
    Ok(samples)
}

/// A bucket bound: `+Inf` or a finite float; in OpenMetrics with a `.` or an exponent.
fn check_le(le: &str, format: Format) -> Result<(), String> {
    if le == "+Inf" {
        return Ok(());
    }
    let value = parse_value(le)?;
    if !value.is_finite() {
        return Err(format!("le={le:?} is not finite"));
    }
    if format == Format::OpenMetrics && !le.contains(['.', 'e']) {
        return Err(format!(
            "OpenMetrics le={le:?} is not in canonical float form"
        ));
    }
    Ok(())
}

/// The suffix `name` carries as a sample of `family`, if it is one.
fn sample_suffix(family: &Family, name: &str, format: Format) -> Option<&'static str> {
    let suffixes: &[&'static str] = match (family.kind, format) {
        // 0.0.4 counters: the TYPE line names the samples (`x_total`, or `x` for
        // statsd_exporter_names).
        (Type::Counter, Format::Text) => &[""],
        (Type::Counter, Format::OpenMetrics) => &["_total", "_created"],
        (Type::Gauge, _) => &[""],
        (Type::Histogram, Format::Text) => &["_bucket", "_sum", "_count"],
        (Type::Histogram, Format::OpenMetrics) => &["_bucket", "_sum", "_count", "_created"],
        (Type::Summary, Format::Text) => &["", "_sum", "_count"],
        (Type::Summary, Format::OpenMetrics) => &["", "_sum", "_count", "_created"],
        // `check_scrape` refuses protobuf before any sample.
        (_, Format::Protobuf) => &[],
    };
    let rest = name.strip_prefix(family.name)?;
    suffixes.iter().copied().find(|s| *s == rest)
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

fn check_help(help: &str, format: Format) -> Result<(), String> {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match (chars.next(), format) {
                (Some('\\' | 'n'), _) | (Some('"'), Format::OpenMetrics) => {}
                (other, _) => return Err(format!("bad HELP escape \\{other:?}")),
            }
        } else if c == '"' && format == Format::OpenMetrics {
            return Err("unescaped quote in OpenMetrics HELP".into());
        }
    }
    Ok(())
}

/// `name[{label="value",...}] value`, strictly.
pub fn parse_sample(line: &str) -> Result<Sample<'_>, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            if !labels.is_empty() {
                inner = inner
                    .strip_prefix(',')
                    .ok_or("labels not separated by ','")?;
            }
            let eq = inner.find('=').ok_or("a label without '='")?;
            let label = &inner[..eq];
            check_label_name(label)?;
            inner = inner[eq + 1..]
                .strip_prefix('"')
                .ok_or("an unquoted label value")?;
            let mut value = String::new();
            let mut chars = inner.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("an unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad label escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((label, value));
            inner = &inner[end + 1..];
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = parse_value(value)?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A sample value as Go's `strconv.ParseFloat` and both Prometheus parsers read it; tallyd
/// writes integers, shortest floats, `+Inf`, `-Inf` and `NaN`, and nothing else (no timestamp).
pub fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    match text.parse::<f64>() {
        Ok(v) if plain && v.is_finite() => Ok(v),
        _ => Err(format!("bad sample value {text:?}")),
    }
}
