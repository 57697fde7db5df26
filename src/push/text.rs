//! The Prometheus text format 0.0.4, read: what `prometheus_client`'s `generate_latest` (and
//! every other client's text writer) puts in a push body, turned into [`PushedFamily`]s.
//!
//! The grammar is the one Prometheus' own Go parser (`expfmt.TextParser`, which Pushgateway
//! uses) accepts, line by line:
//!
//! - blank lines, and `#` lines other than `# HELP` and `# TYPE`, are skipped;
//! - `# HELP name text` (escapes `\\` and `\n`) and `# TYPE name type` (`counter`, `gauge`,
//!   `histogram`, `summary`, `untyped`, in any case) declare a family; each at most once, and
//!   `TYPE` before the family's first sample;
//! - a sample is `name[{label="value",...}] value [timestamp]`: blanks are spaces and tabs, a
//!   trailing comma in the braces is allowed, values escape `\\`, `\"` and `\n`, numbers are
//!   what Go's `ParseFloat` reads (`+Inf`, `-Inf` and `NaN` included);
//! - a sample belongs to the family of its own name, else to the summary `x` it is the `x_sum`
//!   or `x_count` of, else to the histogram `x` it is the `x_bucket`, `x_sum` or `x_count` of,
//!   else to a new untyped family of its name. A summary's `x` samples need a `quantile` label
//!   and a histogram's `x_bucket` ones an `le` label; the samples of one series (same labels
//!   but those two) make one value.
//!
//! Where it is stricter than Go's parser, it is on Pushgateway's side: a sample with a
//! timestamp is refused (Pushgateway refuses those pushes), and so are a sample given twice
//! and values a registry cannot hold (see [`super::model`]). Every refusal names its line.
//! Families declared but without samples are dropped, as Go's parser drops them.

use std::collections::HashMap;

use super::model::{self, BodyError, Place, PushedFamily, PushedKind, PushedSeries, is_label_name};

/// Reads a whole text-format body.
pub fn parse(body: &[u8]) -> Result<Vec<PushedFamily>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = 1 + body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        BodyError::at(Place::Line(line), "not valid UTF-8")
    })?;
    let mut parser = Parser::default();
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        parser.line_number = number;
        parser
            .line(line)
            .map_err(|message| BodyError::at(Place::Line(number), message))?;
    }
    parser.finish()
}

#[derive(Default)]
struct Parser {
    families: Vec<FamilyDraft>,
    by_name: HashMap<String, usize>,
    /// 1-based number of the line being read.
    line_number: usize,
}

struct FamilyDraft {
    name: String,
    kind: Option<PushedKind>,
    help: Option<String>,
    metrics: Vec<MetricDraft>,
    /// Sorted labels (without `le` / `quantile`) → index in `metrics`.
    by_labels: HashMap<Vec<(String, String)>, usize>,
}

/// The samples of one series, as they arrive.
struct MetricDraft {
    labels: Vec<(String, String)>,
    line: usize,
    value: Option<f64>,
    sum: Option<f64>,
    count: Option<f64>,
    buckets: Vec<(f64, f64)>,
    quantiles: Vec<(f64, f64)>,
}

/// What a sample line gives its family's series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Value,
    Quantile,
    Bucket,
    Sum,
    Count,
}

impl Parser {
    fn line(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() {
            return Ok(());
        }
        match line.strip_prefix('#') {
            Some(comment) => self.comment(comment),
            None => self.sample(line),
        }
    }

    fn comment(&mut self, comment: &str) -> Result<(), String> {
        let comment = comment.trim_start_matches([' ', '\t']);
        let (keyword, rest) = split_token(comment);
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(());
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        let (name, rest) = split_token(rest);
        if !crate::naming::is_metric_name(name) {
            return Err(format!(
                "{keyword} names {name:?}, which is not a metric name"
            ));
        }
        let index = self.family_index(name);
        let family = &mut self.families[index];
        let rest = rest.trim_start_matches([' ', '\t']);
        if keyword == "HELP" {
            if family.help.is_some() {
                return Err(format!("a second HELP line for {name}"));
            }
            family.help = Some(unescape_help(rest)?);
            return Ok(());
        }
        let (type_name, trailing) = split_token(rest);
        if !trailing.trim_matches([' ', '\t']).is_empty() {
            return Err(format!(
                "unexpected text after the type of {name}: {trailing:?}"
            ));
        }
        let kind = match type_name.to_ascii_lowercase().as_str() {
            "counter" => PushedKind::Counter,
            "gauge" => PushedKind::Gauge,
            "histogram" => PushedKind::Histogram,
            "summary" => PushedKind::Summary,
            "untyped" => PushedKind::Untyped,
            _ => return Err(format!("{type_name:?} is not a metric type")),
        };
        if family.kind.is_some() {
            return Err(format!("a second TYPE line for {name}"));
        }
        if !family.metrics.is_empty() {
            return Err(format!("the TYPE of {name} comes after its samples"));
        }
        family.kind = Some(kind);
        Ok(())
    }

    /// The family called `name`, made (untyped) if new.
    fn family_index(&mut self, name: &str) -> usize {
        if let Some(index) = self.by_name.get(name) {
            return *index;
        }
        self.families.push(FamilyDraft {
            name: name.to_owned(),
            kind: None,
            help: None,
            metrics: Vec::new(),
            by_labels: HashMap::new(),
        });
        self.by_name
            .insert(name.to_owned(), self.families.len() - 1);
        self.families.len() - 1
    }

    /// Which family a sample called `name` belongs to, and as what.
    fn place(&mut self, name: &str) -> (usize, Role) {
        let kind_of = |parser: &Parser, name: &str| {
            parser
                .by_name
                .get(name)
                .map(|i| (*i, parser.families[*i].kind))
        };
        if let Some((index, kind)) = kind_of(self, name) {
            let role = match kind {
                Some(PushedKind::Summary) => Role::Quantile,
                // A histogram's bare name takes no sample; `sample` says so.
                Some(PushedKind::Histogram) => Role::Bucket,
                _ => Role::Value,
            };
            return (index, role);
        }
        for (suffix, role) in [("_sum", Role::Sum), ("_count", Role::Count)] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some((index, Some(PushedKind::Summary))) = kind_of(self, base)
            {
                return (index, role);
            }
        }
        for (suffix, role) in [
            ("_bucket", Role::Bucket),
            ("_sum", Role::Sum),
            ("_count", Role::Count),
        ] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some((index, Some(PushedKind::Histogram))) = kind_of(self, base)
            {
                return (index, role);
            }
        }
        (self.family_index(name), Role::Value)
    }

    fn sample(&mut self, line: &str) -> Result<(), String> {
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        let name = &line[..name_end];
        if !crate::naming::is_metric_name(name) {
            return Err(format!(
                "expected a metric name at the start of the line, found {:?}",
                preview(line)
            ));
        }
        let mut rest = line[name_end..].trim_start_matches([' ', '\t']);
        let mut labels = Vec::new();
        if let Some(inside) = rest.strip_prefix('{') {
            rest = read_labels(inside, &mut labels)?.trim_start_matches([' ', '\t']);
        }
        let (value_text, rest) = split_token(rest);
        if value_text.is_empty() {
            return Err(format!("{name} has no value"));
        }
        let value = parse_float(value_text)
            .ok_or_else(|| format!("{value_text:?} is not a number (the value of {name})"))?;
        let (timestamp, trailing) = split_token(rest.trim_start_matches([' ', '\t']));
        if !timestamp.is_empty() {
            if !trailing.trim_matches([' ', '\t']).is_empty() {
                return Err(format!("unexpected text after the value of {name}"));
            }
            return Err(format!(
                "{name} carries a timestamp ({timestamp}); pushed samples may not (the push \
                 time is theirs), as Pushgateway refuses them too"
            ));
        }
        let (index, role) = self.place(name);
        let family = &self.families[index];
        let kind = family.kind;
        if kind == Some(PushedKind::Histogram) && name == family.name {
            return Err(format!(
                "{name} is a histogram: its samples are {name}_bucket, {name}_sum and {name}_count"
            ));
        }
        let special = match role {
            Role::Bucket => Some("le"),
            Role::Quantile => Some("quantile"),
            _ => None,
        };
        let mut at = None;
        if let Some(special) = special {
            let Some(position) = labels.iter().position(|(n, _)| n == special) else {
                return Err(format!("{name} needs a {special} label"));
            };
            let (_, text) = labels.remove(position);
            let bound = parse_float(&text)
                .ok_or_else(|| format!("{special}={text:?} of {name} is not a number"))?;
            at = Some(bound);
        }
        labels.sort();
        let line_number = self.line_number;
        let family = &mut self.families[index];
        let metric = match family.by_labels.get(&labels) {
            Some(i) => &mut family.metrics[*i],
            None => {
                family
                    .by_labels
                    .insert(labels.clone(), family.metrics.len());
                family.metrics.push(MetricDraft {
                    labels,
                    line: line_number,
                    value: None,
                    sum: None,
                    count: None,
                    buckets: Vec::new(),
                    quantiles: Vec::new(),
                });
                family.metrics.last_mut().expect("just pushed")
            }
        };
        let twice = || format!("{name} with these labels is given twice");
        match (role, at) {
            (Role::Value, _) => set_once(&mut metric.value, value).map_err(|()| twice()),
            (Role::Sum, _) => set_once(&mut metric.sum, value).map_err(|()| twice()),
            (Role::Count, _) => set_once(&mut metric.count, value).map_err(|()| twice()),
            (Role::Bucket, Some(bound)) => {
                if metric.buckets.iter().any(|(b, _)| *b == bound) {
                    return Err(twice());
                }
                metric.buckets.push((bound, value));
                Ok(())
            }
            (Role::Quantile, Some(q)) => {
                if metric.quantiles.iter().any(|(x, _)| *x == q) {
                    return Err(twice());
                }
                metric.quantiles.push((q, value));
                Ok(())
            }
            _ => unreachable!("bucket and quantile samples carry their label"),
        }
    }

    fn finish(self) -> Result<Vec<PushedFamily>, BodyError> {
        let mut out = Vec::with_capacity(self.families.len());
        for family in self.families {
            if family.metrics.is_empty() {
                continue;
            }
            let kind = family.kind.unwrap_or(PushedKind::Untyped);
            let mut series = Vec::with_capacity(family.metrics.len());
            for metric in family.metrics {
                let at = Place::Line(metric.line);
                let value = match kind {
                    PushedKind::Counter => model::counter(metric.value.unwrap_or_default()),
                    PushedKind::Gauge | PushedKind::Untyped => {
                        Ok(model::PushedValue::Gauge(metric.value.unwrap_or_default()))
                    }
                    PushedKind::Histogram => {
                        model::histogram(metric.buckets, metric.count, metric.sum)
                    }
                    PushedKind::Summary => {
                        model::summary(metric.quantiles, metric.count, metric.sum)
                    }
                }
                .map_err(|message| BodyError::at(at, format!("{}: {message}", family.name)))?;
                series.push(PushedSeries {
                    labels: metric.labels,
                    value,
                    at,
                });
            }
            out.push(PushedFamily {
                name: family.name,
                kind,
                help: family.help,
                series,
            });
        }
        Ok(out)
    }
}

fn set_once(slot: &mut Option<f64>, value: f64) -> Result<(), ()> {
    if slot.is_some() {
        return Err(());
    }
    *slot = Some(value);
    Ok(())
}

/// The text up to the first blank, and what follows it.
fn split_token(text: &str) -> (&str, &str) {
    let end = text.find([' ', '\t']).unwrap_or(text.len());
    text.split_at(end)
}

/// The start of a line, for an error message.
fn preview(line: &str) -> &str {
    match line.char_indices().nth(40) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// A number as Go's `strconv.ParseFloat` reads it in the text format: decimal with an optional
/// exponent, or `Inf`/`Infinity`/`NaN` in any case with an optional sign. (Rust's parser takes
/// the same words; hexadecimal floats, which Go also takes, are not accepted.)
fn parse_float(text: &str) -> Option<f64> {
    text.parse().ok()
}

/// Reads `name="value",...}` (after the `{`) into `labels`; returns the text after the `}`.
fn read_labels<'a>(
    mut text: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    loop {
        text = text.trim_start_matches([' ', '\t']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        let name = &text[..end];
        if !is_label_name(name) {
            return Err(format!(
                "expected a label name or }}, found {:?}",
                preview(text)
            ));
        }
        text = text[end..].trim_start_matches([' ', '\t']);
        text = text
            .strip_prefix('=')
            .ok_or_else(|| format!("expected = after label name {name}"))?
            .trim_start_matches([' ', '\t']);
        text = text
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label {name} must be in double quotes"))?;
        let (value, rest) =
            read_quoted(text).map_err(|reason| format!("the value of label {name}: {reason}"))?;
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} is given twice"));
        }
        labels.push((name.to_owned(), value));
        text = rest.trim_start_matches([' ', '\t']);
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err(format!("expected , or }} after label {name}"));
        }
    }
}

/// Reads a label value up to its closing quote (the opening one is already read), unescaping
/// `\\`, `\"` and `\n`; returns it and the text after the quote.
fn read_quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err(format!("invalid escape \\{other}")),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("no closing quote".into())
}

/// A HELP text, unescaping `\\` and `\n`.
fn unescape_help(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(other) => return Err(format!("invalid escape \\{other} in HELP")),
            None => return Err("HELP ends with a lone \\".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::model::{PushedHistogram, PushedSummary, PushedValue};
    use crate::record::tests::pairs;

    fn parse_text(text: &str) -> Result<Vec<PushedFamily>, BodyError> {
        parse(text.as_bytes())
    }

    fn error(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    /// What `prometheus_client` 0.26's `generate_latest` writes for a counter, a gauge, a
    /// histogram and a summary (its `_created` gauges included).
    const PYTHON: &str = r#"# HELP jobs_total Jobs done.
# TYPE jobs_total counter
jobs_total{kind="a\"b\\c\nd"} 3.0
# HELP jobs_created Jobs done.
# TYPE jobs_created gauge
jobs_created{kind="a\"b\\c\nd"} 1.7965579311965468e+09
# HELP last_success_unixtime Last.
# TYPE last_success_unixtime gauge
last_success_unixtime NaN
# HELP dur_seconds Dur.
# TYPE dur_seconds histogram
dur_seconds_bucket{le="0.1"} 0.0
dur_seconds_bucket{le="1.0"} 1.0
dur_seconds_bucket{le="+Inf"} 1.0
dur_seconds_count 1.0
dur_seconds_sum 0.5
# HELP size_bytes Size.
# TYPE size_bytes summary
size_bytes_count 1.0
size_bytes_sum 3.0
"#;

    #[test]
    fn what_prometheus_client_writes_is_read_whole() {
        let families = parse_text(PYTHON).unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "jobs_total",
                "jobs_created",
                "last_success_unixtime",
                "dur_seconds",
                "size_bytes"
            ]
        );
        let jobs = &families[0];
        assert_eq!(jobs.kind, PushedKind::Counter);
        assert_eq!(jobs.help.as_deref(), Some("Jobs done."));
        assert_eq!(jobs.series[0].labels, pairs(&[("kind", "a\"b\\c\nd")]));
        assert_eq!(jobs.series[0].value, PushedValue::Counter(3.0));
        assert_eq!(jobs.series[0].at, Place::Line(3));
        let PushedValue::Gauge(nan) = families[2].series[0].value else {
            panic!("not a gauge")
        };
        assert!(nan.is_nan());
        assert_eq!(
            families[3].series[0].value,
            PushedValue::Histogram(PushedHistogram {
                bounds: vec![0.1, 1.0],
                counts: vec![0, 1, 0],
                sum: 0.5,
            })
        );
        assert_eq!(
            families[4].series[0].value,
            PushedValue::Summary(PushedSummary {
                quantiles: vec![],
                sum: 3.0,
                count: 1,
            })
        );
    }

    #[test]
    fn summary_quantiles_and_series_are_told_apart_by_their_other_labels() {
        let families = parse_text(
            "# TYPE rpc summary\n\
             rpc{m=\"a\",quantile=\"0.5\"} 1\n\
             rpc{quantile=\"0.9\", m=\"a\"} 2\n\
             rpc{m=\"b\",quantile=\"0.5\"} 3\n\
             rpc_sum{m=\"a\"} 10\n\
             rpc_count{m=\"a\"} 4\n",
        )
        .unwrap();
        let series = &families[0].series;
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels, pairs(&[("m", "a")]));
        assert_eq!(
            series[0].value,
            PushedValue::Summary(PushedSummary {
                quantiles: vec![(0.5, 1.0), (0.9, 2.0)],
                sum: 10.0,
                count: 4,
            })
        );
        assert_eq!(series[1].at, Place::Line(4));
    }

    #[test]
    #[allow(clippy::approx_constant)] // Pushgateway's test value, not π
    fn untyped_samples_and_samples_before_any_type_are_untyped_families() {
        // Pushgateway's own handler test body.
        let families = parse_text(
            "some_metric 3.14\nanother_metric{instance=\"testinstance\",job=\"testjob\"} 42\n",
        )
        .unwrap();
        assert_eq!(families.len(), 2);
        assert_eq!(families[0].kind, PushedKind::Untyped);
        assert_eq!(families[0].series[0].value, PushedValue::Gauge(3.14));
        assert_eq!(
            families[1].series[0].labels,
            pairs(&[("instance", "testinstance"), ("job", "testjob")])
        );
        // A histogram's suffixes only bind to a declared histogram.
        let families = parse_text("x_bucket{le=\"1\"} 2\nx_sum 3\n").unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["x_bucket", "x_sum"]);
        assert_eq!(families[0].series[0].labels, pairs(&[("le", "1")]));
    }

    #[test]
    fn blanks_comments_crlf_trailing_commas_and_special_values_are_read() {
        let families = parse_text(
            "\r\n  # just a comment\n#TYPE a gauge\n\ta{x=\"1\",} +Inf\r\n\
             b { y = \"2\" , z=\"\" }   -Inf  \nc nan\nd 1e3\ne -0.5\n",
        )
        .unwrap();
        let values: Vec<PushedValue> = families.iter().map(|f| f.series[0].value.clone()).collect();
        assert_eq!(values[0], PushedValue::Gauge(f64::INFINITY));
        assert_eq!(values[1], PushedValue::Gauge(f64::NEG_INFINITY));
        assert!(matches!(values[2], PushedValue::Gauge(v) if v.is_nan()));
        assert_eq!(values[3], PushedValue::Gauge(1000.0));
        assert_eq!(values[4], PushedValue::Gauge(-0.5));
        assert_eq!(families[0].kind, PushedKind::Gauge);
        assert_eq!(
            families[1].series[0].labels,
            pairs(&[("y", "2"), ("z", "")])
        );
    }

    #[test]
    fn help_is_unescaped_and_a_family_without_samples_is_dropped() {
        let families = parse_text(
            "# HELP a Line one\\nback\\\\slash\n# TYPE a counter\na 1\n# HELP b Nothing.\n",
        )
        .unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].help.as_deref(), Some("Line one\nback\\slash"));
    }

    #[test]
    fn each_refusal_names_its_line() {
        for (text, line, words) in [
            ("blablabla\n", 1, "no value"),
            ("a 1\nb{x=\"1\" 2\n", 2, "expected , or }"),
            ("a{x=1} 2\n", 1, "double quotes"),
            ("a{x=\"1} 2\n", 1, "no closing quote"),
            ("a{x=\"\\t\"} 2\n", 1, "invalid escape"),
            ("a{1x=\"1\"} 2\n", 1, "label name"),
            ("a{x=\"1\",x=\"2\"} 2\n", 1, "twice"),
            ("a one\n", 1, "not a number"),
            ("a 1\nb 1 1000\n", 2, "timestamp"),
            ("a 1\na 2\n", 2, "given twice"),
            ("# TYPE a gauge\n# TYPE a counter\n", 2, "second TYPE"),
            ("# HELP a x\n# HELP a y\n", 2, "second HELP"),
            ("a 1\n# TYPE a gauge\n", 2, "after its samples"),
            ("# TYPE a gaug\n", 1, "not a metric type"),
            ("# TYPE a gauge extra\n", 1, "unexpected text"),
            ("# HELP 1a x\n", 1, "not a metric name"),
            ("# HELP a bad \\t\n", 1, "invalid escape"),
            ("{x=\"1\"} 2\n", 1, "metric name"),
            ("# TYPE h histogram\nh 1\n", 2, "h_bucket"),
            ("# TYPE h histogram\nh_bucket 1\n", 2, "needs a le label"),
            (
                "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
                2,
                "not a number",
            ),
            ("# TYPE s summary\ns 1\n", 2, "needs a quantile label"),
            ("# TYPE c counter\nc -1\n", 2, "at least 0"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"2\"} 1\n",
                2,
                "cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"1.0\"} 1\n",
                3,
                "twice",
            ),
        ] {
            let message = error(text);
            assert!(
                message.starts_with(&format!("line {line}: ")) && message.contains(words),
                "{text:?}: {message}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused_on_its_line() {
        let body = b"a 1\nb{x=\"\xff\"} 2\n";
        let message = parse(body).unwrap_err().to_string();
        assert!(message.starts_with("line 2: "), "{message}");
    }
}
