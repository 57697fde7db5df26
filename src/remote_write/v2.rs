//! The remote-write 2.0 wire format: `io.prometheus.write.v2.Request` (vendored in
//! `proto/remote_write_v2.proto`) as hand-written `prost` structs, and the request a batch is
//! sent as: every string once in the symbols table, labels and metadata as references to it.
//!
//! Written by hand for `wire`'s reason (no `protoc`, no build script). Every message of the
//! file is here, also native histograms and exemplars that tallyd does not send, so that test
//! receivers decode whatever arrives; a test checks each field's number and wire type against
//! the vendored file. proto3 packs repeated numbers, and so does `prost` by default.

use std::collections::HashMap;

use super::wire::{self, Label};
use crate::read::FamilyView;
use crate::registry::Kind;

pub use super::wire::Sample;

/// The `Content-Type` of a 2.0 request; a 1.0 receiver that checks it answers 415.
pub const CONTENT_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// The response headers by which a 2.0 receiver says how much it wrote; a 1.0 receiver sends
/// none of them.
pub const WRITTEN_HEADERS: [&str; 3] = [
    "X-Prometheus-Remote-Write-Samples-Written",
    "X-Prometheus-Remote-Write-Histograms-Written",
    "X-Prometheus-Remote-Write-Exemplars-Written",
];

/// `io.prometheus.write.v2.Request`. Fields 1 to 3 are reserved (they were 1.0's), so a 1.0
/// receiver that ignores the `Content-Type` decodes this as an empty request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Every string the request uses, once; the first is always the empty string.
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeries>,
}

/// `TimeSeries`: label name and value references in pairs, sorted by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<Histogram>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
    /// Unix ms; 0 = not set.
    #[prost(int64, tag = "6")]
    pub created_timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `Metadata`: the type, and references to the help and unit (the empty symbol when absent).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Metadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// `Metadata.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Unspecified = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    Gaugehistogram = 4,
    Summary = 5,
    Info = 6,
    Stateset = 7,
}

/// `Histogram`: a native histogram (tallyd sends classic `_bucket` series instead).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(oneof = "histogram::Count", tags = "1, 2")]
    pub count: Option<histogram::Count>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(oneof = "histogram::ZeroCount", tags = "6, 7")]
    pub zero_count: Option<histogram::ZeroCount>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    #[prost(enumeration = "ResetHint", tag = "14")]
    pub reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
}

/// The oneofs of [`Histogram`].
pub mod histogram {
    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum Count {
        #[prost(uint64, tag = "1")]
        CountInt(u64),
        #[prost(double, tag = "2")]
        CountFloat(f64),
    }

    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum ZeroCount {
        #[prost(uint64, tag = "6")]
        ZeroCountInt(u64),
        #[prost(double, tag = "7")]
        ZeroCountFloat(f64),
    }
}

/// `Histogram.ResetHint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResetHint {
    Unspecified = 0,
    Yes = 1,
    No = 2,
    Gauge = 3,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

/// What 2.0 sends of a family with each of its series: type, help and unit. Built once per
/// family and shared by its series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: MetricType,
    pub help: String,
    pub unit: String,
}

impl Meta {
    /// No type, help or unit: what a sample read back from the spill carries (the spill keeps
    /// labels and samples only).
    pub fn unspecified() -> Meta {
        Meta {
            kind: MetricType::Unspecified,
            help: String::new(),
            unit: String::new(),
        }
    }

    /// A family's metadata. Every series derived from it (a histogram's `_bucket`, `_sum` and
    /// `_count`) carries the family's type, as Prometheus sends them; a set is a gauge.
    pub fn of(family: &FamilyView<'_>) -> Meta {
        let kind = match family.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge | Kind::Set => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
            Kind::Summary => MetricType::Summary,
        };
        Meta {
            kind,
            help: family.help.unwrap_or_default().to_owned(),
            unit: family.unit.unwrap_or_default().to_owned(),
        }
    }
}

/// The request body for `samples` (each with its series' labels, sorted by name, and metadata):
/// one `TimeSeries` per series in order of first appearance, its samples in the order given,
/// snappy-compressed like 1.0's. A series is told apart by the address of its labels, which
/// the caller keeps alive and unique per series.
pub fn encode<'a>(
    samples: impl IntoIterator<Item = (&'a [Label], &'a Meta, Sample)>,
    scratch: &mut Vec<u8>,
) -> Vec<u8> {
    let mut symbols: HashMap<&'a str, u32, ahash::RandomState> = HashMap::default();
    let mut request = Request::default();
    let mut intern = |text: &'a str, request: &mut Request| -> u32 {
        *symbols.entry(text).or_insert_with(|| {
            request.symbols.push(text.to_owned());
            (request.symbols.len() - 1) as u32
        })
    };
    // The spec's rule: the table starts with the empty string, which absent help and unit
    // point at.
    intern("", &mut request);
    let mut slots: HashMap<*const Label, usize, ahash::RandomState> = HashMap::default();
    for (labels, meta, sample) in samples {
        let slot = match slots.get(&labels.as_ptr()) {
            Some(&slot) => slot,
            None => {
                let mut labels_refs = Vec::with_capacity(labels.len() * 2);
                for label in labels {
                    labels_refs.push(intern(&label.name, &mut request));
                    labels_refs.push(intern(&label.value, &mut request));
                }
                let metadata = Metadata {
                    r#type: meta.kind as i32,
                    help_ref: intern(&meta.help, &mut request),
                    unit_ref: intern(&meta.unit, &mut request),
                };
                request.timeseries.push(TimeSeries {
                    labels_refs,
                    metadata: Some(metadata),
                    ..TimeSeries::default()
                });
                slots.insert(labels.as_ptr(), request.timeseries.len() - 1);
                request.timeseries.len() - 1
            }
        };
        request.timeseries[slot].samples.push(sample);
    }
    wire::compress(&request, scratch)
}

/// A 2.0 request body read back (for tests and test receivers); the error says which layer
/// failed.
pub fn decode(body: &[u8]) -> Result<Request, String> {
    wire::decompress(body)
}

impl Request {
    /// The symbol at `index`, or why there is none.
    pub fn symbol(&self, index: u32) -> Result<&str, String> {
        self.symbols
            .get(index as usize)
            .map(String::as_str)
            .ok_or_else(|| {
                format!(
                    "symbol reference {index} is past the table of {}",
                    self.symbols.len()
                )
            })
    }

    /// A series' labels as `(name, value)` pairs, its references checked.
    pub fn labels(&self, series: &TimeSeries) -> Result<Vec<(String, String)>, String> {
        if !series.labels_refs.len().is_multiple_of(2) {
            return Err("labels_refs holds an odd number of references".into());
        }
        series
            .labels_refs
            .chunks(2)
            .map(|pair| Ok((self.symbol(pair[0])?.into(), self.symbol(pair[1])?.into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::exposition::proto::tests::keys;

    fn label(name: &str, value: &str) -> Label {
        Label::new(name, value)
    }

    #[test]
    fn a_batch_becomes_symbols_and_references_with_metadata() {
        let up = [label("__name__", "up_total"), label("job", "a")];
        let temp = [label("__name__", "temp"), label("job", "a")];
        let counter = Meta {
            kind: MetricType::Counter,
            help: "Ups.".into(),
            unit: String::new(),
        };
        let gauge = Meta {
            kind: MetricType::Gauge,
            help: String::new(),
            unit: "celsius".into(),
        };
        let at = |value: f64, timestamp| Sample { value, timestamp };
        let body = encode(
            [
                (&up[..], &counter, at(1.0, 10)),
                (&temp[..], &gauge, at(-2.5, 10)),
                (&up[..], &counter, at(2.0, 20)),
            ],
            &mut Vec::new(),
        );
        let request = decode(&body).unwrap();
        assert_eq!(
            request.symbols,
            [
                "", "__name__", "up_total", "job", "a", "Ups.", "temp", "celsius"
            ]
        );
        assert_eq!(request.timeseries.len(), 2);
        let first = &request.timeseries[0];
        assert_eq!(
            request.labels(first).unwrap(),
            [
                ("__name__".to_owned(), "up_total".to_owned()),
                ("job".to_owned(), "a".to_owned())
            ]
        );
        assert_eq!(first.samples, [at(1.0, 10), at(2.0, 20)]);
        assert_eq!(
            first.metadata,
            Some(Metadata {
                r#type: MetricType::Counter as i32,
                help_ref: 5,
                unit_ref: 0
            })
        );
        let second = &request.timeseries[1];
        assert_eq!(second.labels_refs, [1, 6, 3, 4]);
        assert_eq!(second.samples, [at(-2.5, 10)]);
        assert_eq!(
            second.metadata,
            Some(Metadata {
                r#type: MetricType::Gauge as i32,
                help_ref: 0,
                unit_ref: 7
            })
        );
    }

    #[test]
    fn a_1_0_decoder_reads_a_2_0_body_as_an_empty_request() {
        let labels = [label("__name__", "x")];
        let meta = Meta {
            kind: MetricType::Gauge,
            help: String::new(),
            unit: String::new(),
        };
        let sample = Sample {
            value: 1.0,
            timestamp: 5,
        };
        let body = encode([(&labels[..], &meta, sample)], &mut Vec::new());
        // What a 1.0 receiver that ignores the Content-Type does (Prometheus 2.42 answers 204):
        // why an answer without the written-count headers cannot count as delivered.
        assert!(wire::decode(&body).unwrap().timeseries.is_empty());
    }

    #[test]
    fn bad_references_are_refused() {
        let request = Request {
            symbols: vec![String::new(), "a".into()],
            timeseries: vec![],
        };
        let odd = TimeSeries {
            labels_refs: vec![1],
            ..TimeSeries::default()
        };
        assert!(request.labels(&odd).unwrap_err().contains("odd"));
        let past = TimeSeries {
            labels_refs: vec![1, 2],
            ..TimeSeries::default()
        };
        assert!(
            request
                .labels(&past)
                .unwrap_err()
                .contains("past the table")
        );
    }

    /// One field as `proto/remote_write_v2.proto` declares it.
    #[derive(Debug)]
    struct Declared {
        message: String,
        field: String,
        kind: String,
        repeated: bool,
        number: u32,
    }

    /// The fields of every message in the vendored file, those inside a `oneof` included;
    /// nested enums and `reserved` ranges are skipped.
    fn declared_fields() -> Vec<Declared> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/remote_write_v2.proto");
        let text = std::fs::read_to_string(path).expect("proto/remote_write_v2.proto is readable");
        // The open blocks: Some(name) for a message, None for an enum or a oneof.
        let mut open: Vec<Option<String>> = Vec::new();
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("message ") {
                open.push(Some(rest.trim_end_matches('{').trim().to_owned()));
                continue;
            }
            if line.starts_with("enum ") || line.starts_with("oneof ") {
                let in_oneof = line.starts_with("oneof ");
                // A oneof's fields belong to the message around it; an enum's values to none.
                let owner = if in_oneof {
                    open.last().cloned().flatten()
                } else {
                    None
                };
                open.push(owner);
                continue;
            }
            if line == "}" {
                open.pop();
                continue;
            }
            let Some(Some(message)) = open.last() else {
                continue;
            };
            if line.starts_with("reserved ") {
                continue;
            }
            let Some((declaration, rest)) = line.split_once('=') else {
                continue;
            };
            let number = rest.split([';', '[']).next().unwrap_or("").trim();
            let words: Vec<&str> = declaration.split_whitespace().collect();
            let (repeated, kind, field) = match words.as_slice() {
                ["repeated", kind, field] => (true, *kind, *field),
                [kind, field] => (false, *kind, *field),
                other => panic!("cannot read the field {other:?} of {message}"),
            };
            fields.push(Declared {
                message: message.clone(),
                field: field.to_owned(),
                kind: kind.to_owned(),
                repeated,
                number: number.parse().expect("a field number"),
            });
        }
        fields
    }

    /// The wire type a proto3 field of `kind` encodes to: repeated numbers are packed (2).
    fn wire_type(kind: &str, repeated: bool) -> u8 {
        let scalar = match kind {
            "double" | "fixed64" | "sfixed64" => 1,
            "float" | "fixed32" | "sfixed32" => 5,
            "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "bool"
            | "MetricType" | "ResetHint" => 0,
            _ => 2,
        };
        if repeated { 2 } else { scalar }
    }

    /// Each field of each message set alone to a value its encoding cannot skip, encoded.
    fn each_field_alone() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        use histogram::{Count, ZeroCount};
        let span = || vec![BucketSpan::default()];
        let ts = TimeSeries::default;
        let ex = Exemplar::default;
        let md = Metadata::default;
        let h = Histogram::default;
        vec![
            (
                "Request",
                "symbols",
                Request {
                    symbols: vec!["x".into()],
                    ..Request::default()
                }
                .encode_to_vec(),
            ),
            (
                "Request",
                "timeseries",
                Request {
                    timeseries: vec![ts()],
                    ..Request::default()
                }
                .encode_to_vec(),
            ),
            (
                "TimeSeries",
                "labels_refs",
                TimeSeries {
                    labels_refs: vec![1],
                    ..ts()
                }
                .encode_to_vec(),
            ),
            (
                "TimeSeries",
                "samples",
                TimeSeries {
                    samples: vec![Sample::default()],
                    ..ts()
                }
                .encode_to_vec(),
            ),
            (
                "TimeSeries",
                "histograms",
                TimeSeries {
                    histograms: vec![h()],
                    ..ts()
                }
                .encode_to_vec(),
            ),
            (
                "TimeSeries",
                "exemplars",
                TimeSeries {
                    exemplars: vec![ex()],
                    ..ts()
                }
                .encode_to_vec(),
            ),
            (
                "TimeSeries",
                "metadata",
                TimeSeries {
                    metadata: Some(md()),
                    ..ts()
                }
                .encode_to_vec(),
            ),
            (
                "TimeSeries",
                "created_timestamp",
                TimeSeries {
                    created_timestamp: 1,
                    ..ts()
                }
                .encode_to_vec(),
            ),
            (
                "Exemplar",
                "labels_refs",
                Exemplar {
                    labels_refs: vec![1],
                    ..ex()
                }
                .encode_to_vec(),
            ),
            (
                "Exemplar",
                "value",
                Exemplar { value: 1.0, ..ex() }.encode_to_vec(),
            ),
            (
                "Exemplar",
                "timestamp",
                Exemplar {
                    timestamp: 1,
                    ..ex()
                }
                .encode_to_vec(),
            ),
            (
                "Sample",
                "value",
                Sample {
                    value: 1.0,
                    timestamp: 0,
                }
                .encode_to_vec(),
            ),
            (
                "Sample",
                "timestamp",
                Sample {
                    value: 0.0,
                    timestamp: 1,
                }
                .encode_to_vec(),
            ),
            (
                "Metadata",
                "type",
                Metadata { r#type: 1, ..md() }.encode_to_vec(),
            ),
            (
                "Metadata",
                "help_ref",
                Metadata {
                    help_ref: 1,
                    ..md()
                }
                .encode_to_vec(),
            ),
            (
                "Metadata",
                "unit_ref",
                Metadata {
                    unit_ref: 1,
                    ..md()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "count_int",
                Histogram {
                    count: Some(Count::CountInt(1)),
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "count_float",
                Histogram {
                    count: Some(Count::CountFloat(1.0)),
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "sum",
                Histogram { sum: 1.0, ..h() }.encode_to_vec(),
            ),
            (
                "Histogram",
                "schema",
                Histogram { schema: -1, ..h() }.encode_to_vec(),
            ),
            (
                "Histogram",
                "zero_threshold",
                Histogram {
                    zero_threshold: 1.0,
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "zero_count_int",
                Histogram {
                    zero_count: Some(ZeroCount::ZeroCountInt(1)),
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "zero_count_float",
                Histogram {
                    zero_count: Some(ZeroCount::ZeroCountFloat(1.0)),
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "negative_spans",
                Histogram {
                    negative_spans: span(),
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "negative_deltas",
                Histogram {
                    negative_deltas: vec![-1, 2],
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "negative_counts",
                Histogram {
                    negative_counts: vec![1.0],
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "positive_spans",
                Histogram {
                    positive_spans: span(),
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "positive_deltas",
                Histogram {
                    positive_deltas: vec![-1, 2],
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "positive_counts",
                Histogram {
                    positive_counts: vec![1.0],
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "reset_hint",
                Histogram {
                    reset_hint: ResetHint::Gauge as i32,
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "timestamp",
                Histogram {
                    timestamp: 1,
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "Histogram",
                "custom_values",
                Histogram {
                    custom_values: vec![0.5],
                    ..h()
                }
                .encode_to_vec(),
            ),
            (
                "BucketSpan",
                "offset",
                BucketSpan {
                    offset: -1,
                    length: 0,
                }
                .encode_to_vec(),
            ),
            (
                "BucketSpan",
                "length",
                BucketSpan {
                    offset: 0,
                    length: 1,
                }
                .encode_to_vec(),
            ),
        ]
    }

    #[test]
    fn field_numbers_and_wire_types_are_those_of_the_vendored_proto() {
        let declared = declared_fields();
        let ours = each_field_alone();
        assert_eq!(declared.len(), 34, "{declared:?}");
        for field in &declared {
            let bytes = ours
                .iter()
                .find(|(m, f, _)| *m == field.message && *f == field.field)
                .map(|(_, _, bytes)| bytes)
                .unwrap_or_else(|| panic!("{}.{} is not in v2.rs", field.message, field.field));
            assert_eq!(
                keys(bytes),
                [(field.number, wire_type(&field.kind, field.repeated))],
                "{}.{} ({} {})",
                field.message,
                field.field,
                if field.repeated {
                    "repeated"
                } else {
                    "singular"
                },
                field.kind
            );
        }
        assert_eq!(
            ours.len(),
            declared.len(),
            "fields the proto file does not declare"
        );
    }

    #[test]
    fn enum_values_are_those_of_the_vendored_proto() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/remote_write_v2.proto");
        let text = std::fs::read_to_string(path).unwrap();
        let values = |block: &str| -> Vec<(String, i32)> {
            let body = text.split(block).nth(1).unwrap().split('}').next().unwrap();
            body.lines()
                .map(|line| line.split("//").next().unwrap_or("").trim())
                .filter_map(|line| line.trim_end_matches(';').split_once('='))
                .map(|(name, n)| (name.trim().to_owned(), n.trim().parse().unwrap()))
                .collect()
        };
        let spelled = |prefix: &str, debug: String| format!("{prefix}{}", debug.to_uppercase());
        let types: Vec<(String, i32)> = (0..8)
            .map(|n| {
                let t = MetricType::try_from(n).unwrap();
                (spelled("METRIC_TYPE_", format!("{t:?}")), t as i32)
            })
            .collect();
        assert_eq!(values("enum MetricType {"), types);
        let hints: Vec<(String, i32)> = (0..4)
            .map(|n| {
                let h = ResetHint::try_from(n).unwrap();
                (spelled("RESET_HINT_", format!("{h:?}")), h as i32)
            })
            .collect();
        assert_eq!(values("enum ResetHint {"), hints);
    }
}
