//! The messages of Prometheus' protobuf exposition format (`io.prometheus.client`, vendored in
//! `proto/metrics.proto` from `prometheus/client_model`), as `prost` structs.
//!
//! Written by hand with `#[derive(prost::Message)]` rather than generated: generating needs
//! `protoc` (or a `.proto` parser such as `protox`) and a build script at every build, for a
//! dozen small messages whose field numbers protobuf promises never to change. The price is
//! keeping them in step with the file by hand, so a test reads `proto/metrics.proto` and checks
//! every field — its number, and the wire type its declared type encodes to — against these
//! structs, field by field. Repeated numbers are unpacked, as `proto2` (the file's syntax)
//! encodes them by default; parsers accept either.
//!
//! Every message and field of the file is here, also those tallyd never writes (`Untyped`,
//! exemplars, float counts), so that tests and tools can decode any scrape with them.

use prost_types::Timestamp;

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
    GaugeHistogram = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
    #[prost(message, optional, tag = "2")]
    pub exemplar: Option<Exemplar>,
    #[prost(message, optional, tag = "3")]
    pub created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Quantile {
    #[prost(double, optional, tag = "1")]
    pub quantile: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
    #[prost(message, optional, tag = "4")]
    pub created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Untyped {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "4")]
    pub sample_count_float: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets, by increasing upper bound; the `+Inf` bucket is optional.
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(message, optional, tag = "15")]
    pub created_timestamp: Option<Timestamp>,
    /// Native buckets from here on.
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    #[prost(double, optional, tag = "8")]
    pub zero_count_float: Option<f64>,
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    pub negative_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "11")]
    pub negative_count: Vec<f64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "14")]
    pub positive_count: Vec<f64>,
    #[prost(message, repeated, tag = "16")]
    pub exemplars: Vec<Exemplar>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "4")]
    pub cumulative_count_float: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<Exemplar>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    #[prost(int64, optional, tag = "6")]
    pub timestamp_ms: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
    #[prost(string, optional, tag = "5")]
    pub unit: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use prost::Message;

    use super::*;

    /// One field as `proto/metrics.proto` declares it.
    #[derive(Debug, Clone, PartialEq)]
    struct Declared {
        message: String,
        field: String,
        kind: String,
        repeated: bool,
        number: u32,
    }

    /// The fields of every message in the vendored file (its messages are not nested).
    fn declared_fields() -> Vec<Declared> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/metrics.proto");
        let text = std::fs::read_to_string(path).expect("proto/metrics.proto is readable");
        let mut fields = Vec::new();
        let mut message: Option<String> = None;
        for line in text.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("message ") {
                message = Some(rest.trim_end_matches('{').trim().to_owned());
                continue;
            }
            if line.starts_with("enum ") || line == "}" {
                message = None;
                continue;
            }
            let Some(message) = &message else { continue };
            let Some((declaration, number)) = line.trim_end_matches(';').split_once('=') else {
                continue;
            };
            let words: Vec<&str> = declaration.split_whitespace().collect();
            let (label, kind, field) = match words.as_slice() {
                [label, kind, field] => (*label, *kind, *field),
                other => panic!("cannot read the field {other:?} of {message}"),
            };
            fields.push(Declared {
                message: message.clone(),
                field: field.to_owned(),
                kind: kind.to_owned(),
                repeated: label == "repeated",
                number: number.trim().parse().expect("a field number"),
            });
        }
        fields
    }

    /// The wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit) a proto2 field of
    /// `kind` encodes to, repeated scalars unpacked.
    fn wire_type(kind: &str) -> u8 {
        match kind {
            "double" | "fixed64" | "sfixed64" => 1,
            "float" | "fixed32" | "sfixed32" => 5,
            "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "bool"
            | "MetricType" => 0,
            _ => 2,
        }
    }

    fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }

    /// The top-level `(field number, wire type)` of each field in an encoded message.
    pub(crate) fn keys(bytes: &[u8]) -> Vec<(u32, u8)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let key = read_varint(bytes, &mut at);
            let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
            match wire {
                0 => {
                    read_varint(bytes, &mut at);
                }
                1 => at += 8,
                5 => at += 4,
                2 => at += read_varint(bytes, &mut at) as usize,
                other => panic!("unexpected wire type {other}"),
            }
            out.push((number, wire));
        }
        out
    }

    /// Each field of each message set alone (to a value its encoding cannot skip), encoded.
    fn each_field_alone() -> BTreeMap<(&'static str, &'static str), Vec<u8>> {
        let text = || Some("x".to_owned());
        let stamp = || {
            Some(Timestamp {
                seconds: 1,
                nanos: 2,
            })
        };
        let mut encoded: BTreeMap<(&'static str, &'static str), Vec<u8>> = BTreeMap::new();
        let mut add = |message: &'static str, field: &'static str, bytes: Vec<u8>| {
            assert!(encoded.insert((message, field), bytes).is_none());
        };
        add(
            "LabelPair",
            "name",
            LabelPair {
                name: text(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        add(
            "LabelPair",
            "value",
            LabelPair {
                value: text(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        add("Gauge", "value", Gauge { value: Some(1.5) }.encode_to_vec());
        add(
            "Untyped",
            "value",
            Untyped { value: Some(1.5) }.encode_to_vec(),
        );
        let counter = Counter::default;
        add(
            "Counter",
            "value",
            Counter {
                value: Some(2.0),
                ..counter()
            }
            .encode_to_vec(),
        );
        add(
            "Counter",
            "exemplar",
            Counter {
                exemplar: Some(Exemplar::default()),
                ..counter()
            }
            .encode_to_vec(),
        );
        add(
            "Counter",
            "created_timestamp",
            Counter {
                created_timestamp: stamp(),
                ..counter()
            }
            .encode_to_vec(),
        );
        add(
            "Quantile",
            "quantile",
            Quantile {
                quantile: Some(0.5),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        add(
            "Quantile",
            "value",
            Quantile {
                value: Some(0.5),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let summary = Summary::default;
        add(
            "Summary",
            "sample_count",
            Summary {
                sample_count: Some(3),
                ..summary()
            }
            .encode_to_vec(),
        );
        add(
            "Summary",
            "sample_sum",
            Summary {
                sample_sum: Some(3.0),
                ..summary()
            }
            .encode_to_vec(),
        );
        add(
            "Summary",
            "quantile",
            Summary {
                quantile: vec![Quantile::default()],
                ..summary()
            }
            .encode_to_vec(),
        );
        add(
            "Summary",
            "created_timestamp",
            Summary {
                created_timestamp: stamp(),
                ..summary()
            }
            .encode_to_vec(),
        );
        let histogram = Histogram::default;
        let span = || vec![BucketSpan::default()];
        add(
            "Histogram",
            "sample_count",
            Histogram {
                sample_count: Some(1),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "sample_count_float",
            Histogram {
                sample_count_float: Some(1.0),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "sample_sum",
            Histogram {
                sample_sum: Some(1.0),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "bucket",
            Histogram {
                bucket: vec![Bucket::default()],
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "created_timestamp",
            Histogram {
                created_timestamp: stamp(),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "schema",
            Histogram {
                schema: Some(-4),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "zero_threshold",
            Histogram {
                zero_threshold: Some(1e-9),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "zero_count",
            Histogram {
                zero_count: Some(1),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "zero_count_float",
            Histogram {
                zero_count_float: Some(1.0),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "negative_span",
            Histogram {
                negative_span: span(),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "negative_delta",
            Histogram {
                negative_delta: vec![-1],
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "negative_count",
            Histogram {
                negative_count: vec![1.0],
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "positive_span",
            Histogram {
                positive_span: span(),
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "positive_delta",
            Histogram {
                positive_delta: vec![-1],
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "positive_count",
            Histogram {
                positive_count: vec![1.0],
                ..histogram()
            }
            .encode_to_vec(),
        );
        add(
            "Histogram",
            "exemplars",
            Histogram {
                exemplars: vec![Exemplar::default()],
                ..histogram()
            }
            .encode_to_vec(),
        );
        let bucket = Bucket::default;
        add(
            "Bucket",
            "cumulative_count",
            Bucket {
                cumulative_count: Some(1),
                ..bucket()
            }
            .encode_to_vec(),
        );
        add(
            "Bucket",
            "cumulative_count_float",
            Bucket {
                cumulative_count_float: Some(1.0),
                ..bucket()
            }
            .encode_to_vec(),
        );
        add(
            "Bucket",
            "upper_bound",
            Bucket {
                upper_bound: Some(1.0),
                ..bucket()
            }
            .encode_to_vec(),
        );
        add(
            "Bucket",
            "exemplar",
            Bucket {
                exemplar: Some(Exemplar::default()),
                ..bucket()
            }
            .encode_to_vec(),
        );
        add(
            "BucketSpan",
            "offset",
            BucketSpan {
                offset: Some(-3),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        add(
            "BucketSpan",
            "length",
            BucketSpan {
                length: Some(3),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let exemplar = Exemplar::default;
        add(
            "Exemplar",
            "label",
            Exemplar {
                label: vec![LabelPair::default()],
                ..exemplar()
            }
            .encode_to_vec(),
        );
        add(
            "Exemplar",
            "value",
            Exemplar {
                value: Some(1.0),
                ..exemplar()
            }
            .encode_to_vec(),
        );
        add(
            "Exemplar",
            "timestamp",
            Exemplar {
                timestamp: stamp(),
                ..exemplar()
            }
            .encode_to_vec(),
        );
        let metric = Metric::default;
        add(
            "Metric",
            "label",
            Metric {
                label: vec![LabelPair::default()],
                ..metric()
            }
            .encode_to_vec(),
        );
        add(
            "Metric",
            "gauge",
            Metric {
                gauge: Some(Gauge::default()),
                ..metric()
            }
            .encode_to_vec(),
        );
        add(
            "Metric",
            "counter",
            Metric {
                counter: Some(Counter::default()),
                ..metric()
            }
            .encode_to_vec(),
        );
        add(
            "Metric",
            "summary",
            Metric {
                summary: Some(Summary::default()),
                ..metric()
            }
            .encode_to_vec(),
        );
        add(
            "Metric",
            "untyped",
            Metric {
                untyped: Some(Untyped::default()),
                ..metric()
            }
            .encode_to_vec(),
        );
        add(
            "Metric",
            "histogram",
            Metric {
                histogram: Some(Histogram::default()),
                ..metric()
            }
            .encode_to_vec(),
        );
        add(
            "Metric",
            "timestamp_ms",
            Metric {
                timestamp_ms: Some(7),
                ..metric()
            }
            .encode_to_vec(),
        );
        let family = MetricFamily::default;
        add(
            "MetricFamily",
            "name",
            MetricFamily {
                name: text(),
                ..family()
            }
            .encode_to_vec(),
        );
        add(
            "MetricFamily",
            "help",
            MetricFamily {
                help: text(),
                ..family()
            }
            .encode_to_vec(),
        );
        add(
            "MetricFamily",
            "type",
            MetricFamily {
                r#type: Some(MetricType::Histogram as i32),
                ..family()
            }
            .encode_to_vec(),
        );
        add(
            "MetricFamily",
            "metric",
            MetricFamily {
                metric: vec![Metric::default()],
                ..family()
            }
            .encode_to_vec(),
        );
        add(
            "MetricFamily",
            "unit",
            MetricFamily {
                unit: text(),
                ..family()
            }
            .encode_to_vec(),
        );
        encoded
    }

    #[test]
    fn every_field_has_the_number_and_wire_type_the_proto_file_gives_it() {
        let declared = declared_fields();
        assert!(declared.len() > 40, "read only {} fields", declared.len());
        let mut ours = each_field_alone();
        for field in &declared {
            let key = ours
                .keys()
                .find(|(m, f)| *m == field.message && *f == field.field)
                .copied()
                .unwrap_or_else(|| panic!("no struct field for {field:?}"));
            let bytes = ours.remove(&key).unwrap();
            assert_eq!(
                keys(&bytes),
                [(field.number, wire_type(&field.kind))],
                "{}.{} ({} {})",
                field.message,
                field.field,
                if field.repeated {
                    "repeated"
                } else {
                    "optional"
                },
                field.kind
            );
        }
        assert!(
            ours.is_empty(),
            "fields the proto file does not declare: {ours:?}"
        );
    }

    #[test]
    fn metric_types_have_the_proto_files_numbers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/metrics.proto");
        let text = std::fs::read_to_string(path).unwrap();
        let block = text.split("enum MetricType {").nth(1).unwrap();
        let block = block.split('}').next().unwrap();
        let mut declared: Vec<(String, i32)> = block
            .lines()
            .map(|line| line.split("//").next().unwrap_or("").trim())
            .filter_map(|line| line.trim_end_matches(';').split_once('='))
            .map(|(name, number)| (name.trim().to_owned(), number.trim().parse().unwrap()))
            .collect();
        declared.sort_by_key(|(_, number)| *number);
        let ours: Vec<(String, i32)> = (0..6)
            .map(|n| {
                let kind = MetricType::try_from(n).expect("a metric type");
                // `GaugeHistogram` is spelled `GAUGE_HISTOGRAM` in the file.
                let mut name = String::new();
                for (i, c) in format!("{kind:?}").chars().enumerate() {
                    if i > 0 && c.is_ascii_uppercase() {
                        name.push('_');
                    }
                    name.push(c.to_ascii_uppercase());
                }
                (name, kind as i32)
            })
            .collect();
        assert_eq!(declared, ours);
    }
}
