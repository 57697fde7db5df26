//! The relay's `lines = "mapped"` form: a sample re-encoded as a DogStatsD line under the name
//! and labels of the series tallyd recorded it in.
//!
//! The series' part of the line (`name` and `|#k:v,...`) is rendered once, when a receive
//! thread first resolves the series ([`MappedForm::of`], the slow path), and kept beside the
//! thread's cached handle; relaying a sample then only writes its value, type and rate between
//! the two (no allocation).

use crate::protocol::{MetricType, Sample, Value};
use crate::read::Labels;
use crate::registry::Series;

/// A series' name and tags, rendered for mapped relaying.
#[derive(Debug, PartialEq, Eq)]
pub struct MappedForm {
    /// `name` followed by `|#k:v,...` (nothing after the name for a series without labels).
    text: Box<[u8]>,
    name_len: usize,
}

impl MappedForm {
    /// The form of `series`: its family name (a counter's without `_total`, which the upstream
    /// adds back if it is a tallyd) and its labels as DogStatsD tags.
    pub fn of(series: &Series) -> Box<MappedForm> {
        let labels = series.labels();
        Box::new(MappedForm::new(
            series.family_name(),
            Labels::Escaped(labels),
        ))
    }

    /// The form of a name and labels. A tag cannot hold `,` (it separates tags), `|` (fields)
    /// or a line break, so each of those in a label value is written as `_`.
    pub fn new(name: &str, labels: Labels<'_>) -> MappedForm {
        let mut text = Vec::with_capacity(name.len() + 64);
        text.extend_from_slice(name.as_bytes());
        for (i, (label, value)) in labels.pairs().enumerate() {
            text.extend_from_slice(if i == 0 { b"|#" } else { b"," });
            text.extend_from_slice(label.as_bytes());
            text.push(b':');
            text.extend(value.bytes().map(|b| match b {
                b',' | b'|' | b'\n' | b'\r' => b'_',
                b => b,
            }));
        }
        MappedForm {
            name_len: name.len(),
            text: text.into_boxed_slice(),
        }
    }

    /// Appends the line(s) for `sample`, its value multiplied by `scale` (the mapping rule's
    /// scale, as tallyd applied it), to `out`, each line followed by `\n`. One line but for a
    /// negative absolute gauge: a leading `-` reads as a decrement under Etsy's gauge rules,
    /// so it is sent as StatsD clients send it, `name:0|g` then `name:-N|g`, which both
    /// readings take to mean -N.
    pub fn encode(&self, sample: &Sample<'_>, scale: f64, out: &mut Vec<u8>) {
        let (name, tags) = self.text.split_at(self.name_len);
        let wire = sample.metric_type.wire().as_bytes();
        let mut line = |value: &dyn Fn(&mut Vec<u8>)| {
            out.extend_from_slice(name);
            out.push(b':');
            value(out);
            out.push(b'|');
            out.extend_from_slice(wire);
            if sample.sample_rate < 1.0 {
                out.extend_from_slice(b"|@");
                write_number(sample.sample_rate, out);
            }
            out.extend_from_slice(tags);
            out.push(b'\n');
        };
        match sample.value {
            Value::SetMember(member) => line(&|out| out.extend_from_slice(member)),
            Value::GaugeDelta(delta) => {
                let delta = delta * scale;
                line(&|out| {
                    if delta >= 0.0 {
                        out.push(b'+');
                    }
                    write_number(delta, out);
                });
            }
            Value::Number(number) => {
                let number = number * scale;
                if sample.metric_type == MetricType::Gauge && number < 0.0 {
                    line(&|out| out.push(b'0'));
                }
                line(&|out| write_number(number, out));
            }
        }
    }
}

/// Writes a finite number as briefly as it reads back exactly: integers without a fraction
/// (`250`, not `250.0`), others in ryu's shortest form (`0.25`, `1e-7`).
fn write_number(value: f64, out: &mut Vec<u8>) {
    // Below 2^53 every integer is exact, and `as i64` cannot overflow.
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        out.extend_from_slice(itoa::Buffer::new().format(value as i64).as_bytes());
    } else {
        let mut buffer = ryu::Buffer::new();
        let text = buffer.format_finite(value);
        out.extend_from_slice(text.strip_suffix(".0").unwrap_or(text).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ParseOptions, Reason, SampleSink, parse_datagram};

    /// Encodes every sample of `line` with `form` and `scale`.
    fn encode(form: &MappedForm, line: &str, scale: f64, options: ParseOptions) -> String {
        struct Sink<'f> {
            form: &'f MappedForm,
            scale: f64,
            out: Vec<u8>,
        }
        impl SampleSink for Sink<'_> {
            fn sample(&mut self, sample: &Sample<'_>) {
                self.form.encode(sample, self.scale, &mut self.out);
            }
            fn reject(&mut self, reason: Reason) {
                panic!("refused: {reason:?}");
            }
            fn extension(&mut self, _: crate::protocol::Extension) {}
        }
        let mut sink = Sink {
            form,
            scale,
            out: Vec::new(),
        };
        parse_datagram(line.as_bytes(), &options, &mut sink);
        String::from_utf8(sink.out).unwrap()
    }

    fn form(name: &str, labels: &[(&str, &str)]) -> MappedForm {
        MappedForm::new(name, Labels::Pairs(labels))
    }

    #[test]
    fn a_sample_keeps_its_type_value_and_rate_under_the_new_name_and_tags() {
        let form = form("latency_seconds", &[("model", "fraud"), ("region", "eu")]);
        let etsy = ParseOptions::default();
        assert_eq!(
            encode(&form, "a.b:250|ms|@0.5|#x:y", 1.0, etsy),
            "latency_seconds:250|ms|@0.5|#model:fraud,region:eu\n"
        );
        assert_eq!(
            encode(&form, "a.b:0.25|h", 1.0, etsy),
            "latency_seconds:0.25|h|#model:fraud,region:eu\n"
        );
    }

    #[test]
    fn a_series_without_labels_has_no_tag_field() {
        assert_eq!(
            encode(&form("hits", &[]), "hits:3|c", 1.0, ParseOptions::default()),
            "hits:3|c\n"
        );
    }

    #[test]
    fn packed_values_become_one_line_each() {
        assert_eq!(
            encode(&form("h", &[]), "h:1:2.5:3|d", 1.0, ParseOptions::default()),
            "h:1|d\nh:2.5|d\nh:3|d\n"
        );
    }

    #[test]
    fn the_rules_scale_is_applied_to_values_and_deltas() {
        let form = form("g", &[]);
        let etsy = ParseOptions::default();
        assert_eq!(encode(&form, "g:3|g", 2.0, etsy), "g:6|g\n");
        assert_eq!(encode(&form, "g:+3|g", 0.5, etsy), "g:+1.5|g\n");
        assert_eq!(encode(&form, "g:-3|g", 2.0, etsy), "g:-6|g\n");
        assert_eq!(encode(&form, "g:+0|g", 1.0, etsy), "g:+0|g\n");
    }

    #[test]
    fn a_negative_absolute_gauge_is_sent_as_zero_then_the_decrement() {
        let dogstatsd = ParseOptions {
            gauge_deltas: false,
        };
        assert_eq!(
            encode(&form("g", &[("k", "v")]), "g:-4|g", 1.0, dogstatsd),
            "g:0|g|#k:v\ng:-4|g|#k:v\n"
        );
    }

    #[test]
    fn set_members_are_sent_verbatim() {
        assert_eq!(
            encode(
                &form("users", &[]),
                "users:alice:x|s",
                1.0,
                ParseOptions::default()
            ),
            "users:alice:x|s\n"
        );
    }

    #[test]
    fn characters_a_tag_cannot_hold_become_underscores() {
        let form = form("x", &[("a", "p,q|r\ns"), ("b", "k:v#w")]);
        assert_eq!(
            encode(&form, "x:1|c", 1.0, ParseOptions::default()),
            "x:1|c|#a:p_q_r_s,b:k:v#w\n"
        );
    }

    #[test]
    fn numbers_are_written_briefly_and_read_back_exactly() {
        for value in [
            0.0, 1.0, -2.0, 250.0, 0.25, 1e-7, 123456.789, 1e300, -0.5, 9e15,
        ] {
            let mut out = Vec::new();
            write_number(value, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), value, "{text}");
            assert!(!text.ends_with(".0"), "{text}");
        }
        let mut out = Vec::new();
        write_number(250.0, &mut out);
        assert_eq!(out, b"250");
    }
}
