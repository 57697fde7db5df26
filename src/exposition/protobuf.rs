//! The protobuf exposition format: what the read seam visits, as varint-length-delimited
//! `io.prometheus.client.MetricFamily` messages ([`super::proto`]), the format Prometheus asks
//! for first when its native histograms are on. It is the one format that carries native
//! histogram buckets; everything else follows the text formats' rules (`super`): the same
//! names (`_total` on counters unless `statsd_exporter_names`), sets as gauges, HELP text, and
//! the same robustness (a family is written to the output only once it is complete).
//!
//! Nothing is allocated per series once the buffers have grown: one `Metric` message (its
//! label strings, bucket lists and native spans) is refilled for every series and encoded into
//! the family's buffer, which goes to the output behind its length when the family ends.

use prost::Message;
use prost_types::Timestamp;

use super::proto::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
    Quantile, Summary,
};
use super::{DEFAULT_HELP, Format, counter_names, is_valid_unit};
use crate::naming::is_metric_name;
use crate::read::{FamilyView, Labels, SeriesView, ValueView, Visitor};
use crate::registry::native::spans_and_deltas;
use crate::registry::{HistogramCell, Kind, NativeSnapshot, SummaryCell};

/// The `Content-Type` of a protobuf response.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Writes what the read seam visits as delimited `MetricFamily` messages.
pub(super) struct ProtobufWriter<'o> {
    pub(super) out: &'o mut Vec<u8>,
    /// Counters without `_total` (registry families only), as in the classic text format.
    pub(super) statsd_exporter_names: bool,
    /// The family being written, without its length prefix.
    family: Vec<u8>,
    /// Its metadata, reused.
    header: MetricFamily,
    any: bool,
    /// The series being written, reused: labels, and one of the value messages below.
    metric: Metric,
    histogram: Histogram,
    summary: Summary,
    native: NativeSnapshot,
    spans: Vec<(i32, u32)>,
}

impl<'o> ProtobufWriter<'o> {
    pub(super) fn new(out: &'o mut Vec<u8>, statsd_exporter_names: bool) -> Self {
        ProtobufWriter {
            out,
            statsd_exporter_names,
            family: Vec::new(),
            header: MetricFamily::default(),
            any: false,
            metric: Metric::default(),
            histogram: Histogram::default(),
            summary: Summary::default(),
            native: NativeSnapshot::default(),
            spans: Vec::new(),
        }
    }

    /// Takes the reused value messages (and their buffers) back from the series message.
    fn reclaim(&mut self) {
        if let Some(histogram) = self.metric.histogram.take() {
            self.histogram = histogram;
        }
        if let Some(summary) = self.metric.summary.take() {
            self.summary = summary;
        }
    }

    fn set_labels(&mut self, labels: &Labels<'_>) {
        let pairs = &mut self.metric.label;
        let mut used = 0;
        for (name, value) in labels.pairs() {
            if used == pairs.len() {
                pairs.push(LabelPair::default());
            }
            let pair = &mut pairs[used];
            set_text(&mut pair.name, name);
            set_text(&mut pair.value, &value);
            used += 1;
        }
        pairs.truncate(used);
    }

    fn fill_histogram(&mut self, cell: &HistogramCell, created: Option<f64>) {
        let histogram = &mut self.histogram;
        // Native buckets first, then the classic counts: see `HistogramCell::read_native`.
        let native = cell.read_native(&mut self.native);
        histogram.bucket.clear();
        let mut cumulative: u64 = 0;
        for (index, count) in cell.counts().enumerate() {
            cumulative = cumulative.saturating_add(count);
            // The `+Inf` bucket is left out, as client_golang does: its count is the sample
            // count.
            if let Some(bound) = cell.bounds().get(index) {
                histogram.bucket.push(Bucket {
                    cumulative_count: Some(cumulative),
                    upper_bound: Some(*bound),
                    ..Bucket::default()
                });
            }
        }
        histogram.sample_count = Some(cumulative);
        histogram.sample_sum = Some(cell.sum());
        histogram.created_timestamp = created.map(timestamp);
        if !native {
            histogram.schema = None;
            histogram.zero_threshold = None;
            histogram.zero_count = None;
            histogram.negative_span.clear();
            histogram.negative_delta.clear();
            histogram.positive_span.clear();
            histogram.positive_delta.clear();
            return;
        }
        let native = &self.native;
        histogram.schema = Some(i32::from(native.schema));
        histogram.zero_threshold = Some(native.zero_threshold);
        histogram.zero_count = Some(native.zero_count);
        spans_and_deltas(
            &native.negative,
            &mut self.spans,
            &mut histogram.negative_delta,
        );
        set_spans(&mut histogram.negative_span, &self.spans);
        // The zero threshold (2^-128, never 0) marks the histogram native even before it has
        // buckets; with a threshold of 0 the format would want a no-op span here.
        spans_and_deltas(
            &native.positive,
            &mut self.spans,
            &mut histogram.positive_delta,
        );
        set_spans(&mut histogram.positive_span, &self.spans);
    }

    fn fill_summary(&mut self, cell: &SummaryCell, created: Option<f64>) {
        let summary = &mut self.summary;
        summary.quantile.clear();
        let (sum, count) = cell.read(|quantile, value| {
            summary.quantile.push(Quantile {
                quantile: Some(quantile),
                value: Some(value),
            })
        });
        summary.sample_count = Some(count);
        summary.sample_sum = Some(sum);
        summary.created_timestamp = created.map(timestamp);
    }
}

impl Visitor for ProtobufWriter<'_> {
    fn family(&mut self, family: &FamilyView<'_>) -> bool {
        if !is_metric_name(family.name) {
            return false;
        }
        self.family.clear();
        self.any = false;
        let header = &mut self.header;
        let kind = match family.kind {
            Kind::Counter => {
                let names =
                    counter_names(family.name, Format::Protobuf, self.statsd_exporter_names);
                let name = header.name.get_or_insert_with(String::new);
                name.clear();
                name.push_str(names.meta);
                name.push_str(names.meta_suffix);
                MetricType::Counter
            }
            kind => {
                set_text(&mut header.name, family.name);
                match kind {
                    Kind::Histogram => MetricType::Histogram,
                    Kind::Summary => MetricType::Summary,
                    _ => MetricType::Gauge,
                }
            }
        };
        header.r#type = Some(kind as i32);
        set_text(&mut header.help, family.help.unwrap_or(DEFAULT_HELP));
        match family.unit.filter(|unit| is_valid_unit(unit)) {
            Some(unit) => set_text(&mut header.unit, unit),
            None => header.unit = None,
        }
        // The header's fields, then one `metric` field per series: a message's fields may come
        // in any order, and repeated ones accumulate.
        append(&self.header, &mut self.family);
        true
    }

    fn series(&mut self, _family: &FamilyView<'_>, series: &SeriesView<'_>) {
        self.any = true;
        // Left behind only if writing the last series panicked.
        self.reclaim();
        self.set_labels(&series.labels);
        let metric = &mut self.metric;
        metric.gauge = None;
        metric.counter = None;
        let created = series.created;
        match series.value {
            ValueView::Counter(value) => {
                metric.counter = Some(Counter {
                    value: Some(value),
                    exemplar: None,
                    created_timestamp: created.map(timestamp),
                })
            }
            ValueView::Gauge(value) => metric.gauge = Some(Gauge { value: Some(value) }),
            ValueView::Set(members) => {
                metric.gauge = Some(Gauge {
                    value: Some(members as f64),
                })
            }
            ValueView::Histogram(cell) => {
                self.fill_histogram(cell, created);
                self.metric.histogram = Some(std::mem::take(&mut self.histogram));
            }
            ValueView::Summary(cell) => {
                self.fill_summary(cell, created);
                self.metric.summary = Some(std::mem::take(&mut self.summary));
            }
        }
        prost::encoding::message::encode(4, &self.metric, &mut self.family);
        self.reclaim();
    }

    fn end_family(&mut self, _family: &FamilyView<'_>) {
        if !self.any {
            return;
        }
        prost::encoding::encode_varint(self.family.len() as u64, self.out);
        self.out.extend_from_slice(&self.family);
    }
}

/// Encodes `message`'s fields at the end of `out`.
fn append(message: &impl Message, out: &mut Vec<u8>) {
    // A Vec grows as needed, so encoding into one cannot run out of room.
    let _ = message.encode(out);
}

/// Sets an optional string field to `text`, reusing its buffer.
fn set_text(field: &mut Option<String>, text: &str) {
    let value = field.get_or_insert_with(String::new);
    value.clear();
    value.push_str(text);
}

fn set_spans(out: &mut Vec<BucketSpan>, spans: &[(i32, u32)]) {
    out.clear();
    out.extend(spans.iter().map(|(offset, length)| BucketSpan {
        offset: Some(*offset),
        length: Some(*length),
    }));
}

/// Unix seconds as a protobuf `Timestamp`.
fn timestamp(unix_seconds: f64) -> Timestamp {
    let seconds = unix_seconds.floor();
    let nanos = ((unix_seconds - seconds) * 1e9)
        .round()
        .clamp(0.0, 999_999_999.0);
    Timestamp {
        seconds: seconds as i64,
        nanos: nanos as i32,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::super::proto::{self, MetricFamily, MetricType};
    use super::super::tests::{all_kinds_registry, apply, registry, series};
    use super::super::{ExpositionOptions, Format, render};
    use crate::registry::native::{DEFAULT_ZERO_THRESHOLD, bucket_index};
    use crate::registry::{
        Kind, NativeOptions, Registry, RegistrySettings, Series, SeriesKeyBuf, SeriesOptions,
        Update,
    };
    use crate::telemetry::Telemetry;

    fn series_with(
        registry: &Registry,
        kind: Kind,
        name: &str,
        labels: &[(&str, &str)],
        options: SeriesOptions,
    ) -> Arc<Series> {
        let mut key = SeriesKeyBuf::default();
        key.start(kind).push_str(name);
        key.end_family();
        for (label, value) in labels {
            key.push_label(|out| out.push_str(label), value);
        }
        key.options = options;
        key.finish();
        registry.resolve(&key).expect("no type conflict")
    }

    fn observe(registry: &Registry, series: &Series, value: f64, weight: u64) {
        apply(registry, series, Update::Observe { value, weight });
    }

    /// Every message of a protobuf scrape, decoded with prost.
    fn scrape(registry: &Registry, options: ExpositionOptions) -> Vec<MetricFamily> {
        let mut body = Vec::new();
        render(
            registry,
            &Telemetry::default(),
            Format::Protobuf,
            options,
            &mut body,
        );
        let mut rest = &body[..];
        let mut families = Vec::new();
        while !rest.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut rest).expect("a message"));
        }
        families
    }

    fn family<'a>(families: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
        families
            .iter()
            .find(|f| f.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
    }

    fn labels(metric: &proto::Metric) -> Vec<(&str, &str)> {
        metric
            .label
            .iter()
            .map(|l| (l.name.as_deref().unwrap(), l.value.as_deref().unwrap()))
            .collect()
    }

    fn native_registry() -> Registry {
        Registry::new(RegistrySettings {
            native_bucket_factor: 1.1,
            ..RegistrySettings::default()
        })
    }

    #[test]
    fn a_whole_scrape_decodes_family_by_family() {
        let registry = all_kinds_registry();
        let answer = series(&registry, Kind::Summary, "answer_seconds", &[]);
        for value in [1.0, 2.0, 3.0] {
            observe(&registry, &answer, value, 1);
        }
        let families = scrape(&registry, ExpositionOptions::default());

        let counter = family(&families, "requests_total");
        assert_eq!(counter.r#type, Some(MetricType::Counter as i32));
        assert_eq!(counter.help.as_deref(), Some(super::DEFAULT_HELP));
        let metric = &counter.metric[0];
        assert_eq!(labels(metric), [("code", "200"), ("path", "/a \"b\"")]);
        let value = metric.counter.as_ref().unwrap();
        assert_eq!(value.value, Some(5.0));
        let created = value.created_timestamp.as_ref().unwrap();
        let created = created.seconds as f64 + f64::from(created.nanos) / 1e9;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - created).abs() < 60.0, "{created}");
        family(&families, "restarts_total");

        let gauge = family(&families, "queue_depth");
        assert_eq!(gauge.r#type, Some(MetricType::Gauge as i32));
        let values: Vec<(Vec<(&str, &str)>, f64)> = gauge
            .metric
            .iter()
            .map(|m| (labels(m), m.gauge.as_ref().unwrap().value.unwrap()))
            .collect();
        assert_eq!(values[0], (vec![("queue", "a\\b\nc")], 0.25));
        assert_eq!(values[1].0, [("queue", "x")]);
        assert!(values[1].1.is_nan());

        let set = family(&families, "unique_users");
        assert_eq!(set.r#type, Some(MetricType::Gauge as i32));
        assert_eq!(set.metric[0].gauge.as_ref().unwrap().value, Some(1.0));

        let histogram = family(&families, "request_duration_seconds");
        assert_eq!(histogram.r#type, Some(MetricType::Histogram as i32));
        let with_op = histogram
            .metric
            .iter()
            .find(|m| !m.label.is_empty())
            .unwrap();
        assert_eq!(labels(with_op), [("op", "get")]);
        let h = with_op.histogram.as_ref().unwrap();
        assert_eq!(h.sample_count, Some(4));
        assert!((h.sample_sum.unwrap() - 53.301).abs() < 1e-9);
        let buckets: Vec<(f64, u64)> = h
            .bucket
            .iter()
            .map(|b| (b.upper_bound.unwrap(), b.cumulative_count.unwrap()))
            .collect();
        assert_eq!(buckets.len(), 11, "no +Inf bucket: {buckets:?}");
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets[6], (0.5, 2));
        assert_eq!(buckets[10], (10.0, 3));
        assert!(h.created_timestamp.is_some());
        assert_eq!(h.schema, None, "no native buckets unless configured");
        assert!(h.positive_span.is_empty() && h.zero_threshold.is_none());

        let summary = family(&families, "answer_seconds");
        assert_eq!(summary.r#type, Some(MetricType::Summary as i32));
        let s = summary.metric[0].summary.as_ref().unwrap();
        assert_eq!((s.sample_count, s.sample_sum), (Some(3), Some(6.0)));
        let quantiles: Vec<f64> = s.quantile.iter().map(|q| q.quantile.unwrap()).collect();
        assert_eq!(quantiles, [0.5, 0.9, 0.99]);
        assert!((s.quantile[0].value.unwrap() - 2.0).abs() < 0.03);
        assert!(s.created_timestamp.is_some());

        // tallyd's own metrics follow, counters with `_total`.
        let own = family(&families, "tallyd_scrapes_total");
        assert_eq!(own.r#type, Some(MetricType::Counter as i32));
        assert!(
            own.metric[0]
                .counter
                .as_ref()
                .unwrap()
                .created_timestamp
                .is_none()
        );
        family(&families, "tallyd_build_info");
        let names: Vec<&str> = families.iter().filter_map(|f| f.name.as_deref()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a family twice: {names:?}");
    }

    #[test]
    fn native_buckets_ride_along_the_classic_ones() {
        let registry = native_registry();
        let h = series(
            &registry,
            Kind::Histogram,
            "infer_seconds",
            &[("model", "v1")],
        );
        for value in [0.0, 1.0, 2.0, 3.0] {
            observe(&registry, &h, value, 1);
        }
        // A sampled observation (rate 0.25) counts 4 times in both bucket kinds.
        observe(&registry, &h, 0.25, 4);
        let families = scrape(&registry, ExpositionOptions::default());
        let metric = &family(&families, "infer_seconds").metric[0];
        assert_eq!(labels(metric), [("model", "v1")]);
        let h = metric.histogram.as_ref().unwrap();
        assert_eq!(h.sample_count, Some(8));
        assert_eq!(h.bucket.len(), 11, "the classic buckets are still there");
        assert_eq!(h.bucket[5].cumulative_count, Some(5), "le=0.25");
        assert_eq!(h.schema, Some(3));
        assert_eq!(h.zero_threshold, Some(DEFAULT_ZERO_THRESHOLD));
        assert_eq!(h.zero_count, Some(1));
        let spans: Vec<(i32, u32)> = h
            .positive_span
            .iter()
            .map(|s| (s.offset.unwrap(), s.length.unwrap()))
            .collect();
        // 0.25 is bucket -16; 1, 2 and 3 are 0, 8 and 13 (client_golang's own example).
        assert_eq!(bucket_index(0.25, 3), -16);
        assert_eq!(spans, [(-16, 1), (15, 1), (7, 1), (4, 1)]);
        assert_eq!(h.positive_delta, [4, -3, 0, 0]);
        assert!(h.negative_span.is_empty() && h.negative_delta.is_empty());
        let native_total: i64 = h
            .positive_delta
            .iter()
            .scan(0i64, |count, delta| {
                *count += delta;
                Some(*count)
            })
            .sum::<i64>()
            + h.zero_count.unwrap() as i64;
        assert_eq!(native_total as u64, h.sample_count.unwrap());
    }

    #[test]
    fn a_family_can_turn_native_buckets_on_or_off_against_the_default() {
        let on = SeriesOptions {
            native: NativeOptions {
                bucket_factor: Some(4.0),
                max_buckets: Some(2),
            },
            ..SeriesOptions::default()
        };
        let off = SeriesOptions {
            native: NativeOptions {
                bucket_factor: Some(0.0),
                max_buckets: None,
            },
            ..SeriesOptions::default()
        };
        let registry = registry();
        let coarse = series_with(&registry, Kind::Histogram, "coarse", &[], on);
        for value in [0.5, 3.0, 10.0, 100.0, 1e6] {
            observe(&registry, &coarse, value, 1);
        }
        let registry_on = native_registry();
        let plain = series_with(&registry_on, Kind::Histogram, "plain", &[], off);
        observe(&registry_on, &plain, 1.0, 1);
        let families = scrape(&registry, ExpositionOptions::default());
        let h = family(&families, "coarse").metric[0]
            .histogram
            .clone()
            .unwrap();
        // Schema -1 to start; a cap of 2 buckets widened them.
        assert!(h.schema.unwrap() < -1, "{h:?}");
        assert!(h.positive_delta.len() <= 3, "{h:?}");
        let families = scrape(&registry_on, ExpositionOptions::default());
        let h = family(&families, "plain").metric[0]
            .histogram
            .clone()
            .unwrap();
        assert_eq!(h.schema, None);
    }

    #[test]
    fn statsd_exporter_names_drop_total_from_registry_counters_only() {
        let registry = registry();
        let hits = series(&registry, Kind::Counter, "hits", &[]);
        apply(&registry, &hits, Update::Add(1.0));
        let jobs = series(&registry, Kind::Counter, "jobs_total", &[]);
        apply(&registry, &jobs, Update::Add(1.0));
        let plain = scrape(&registry, ExpositionOptions::default());
        family(&plain, "hits_total");
        family(&plain, "jobs_total");
        let compat = scrape(
            &registry,
            ExpositionOptions {
                statsd_exporter_names: true,
            },
        );
        assert_eq!(
            family(&compat, "hits").metric[0]
                .counter
                .as_ref()
                .unwrap()
                .value,
            Some(1.0)
        );
        family(&compat, "tallyd_scrapes_total");
        assert!(
            compat
                .iter()
                .all(|f| f.name.as_deref() != Some("hits_total"))
        );
    }

    #[test]
    fn families_no_scraper_could_use_are_left_out() {
        let registry = registry();
        for name in ["bad-name", "tallyd_scrapes"] {
            let s = series(&registry, Kind::Gauge, name, &[]);
            apply(&registry, &s, Update::Set(42.0));
        }
        let families = scrape(&registry, ExpositionOptions::default());
        assert!(
            families
                .iter()
                .all(|f| f.name.as_deref() != Some("bad-name"))
        );
        assert!(
            families
                .iter()
                .all(|f| f.name.as_deref() != Some("tallyd_scrapes"))
        );
        for family in &families {
            assert!(!family.metric.is_empty(), "{family:?}");
        }
    }

    #[test]
    fn units_are_carried_and_help_is_not_escaped() {
        let registry = registry();
        let options = SeriesOptions {
            help: Some("Time \\ spent\n\"here\"".into()),
            unit: Some("seconds".into()),
            ..SeriesOptions::default()
        };
        let s = series_with(&registry, Kind::Gauge, "wait_seconds", &[], options);
        apply(&registry, &s, Update::Set(1.0));
        let families = scrape(&registry, ExpositionOptions::default());
        let wait = family(&families, "wait_seconds");
        assert_eq!(wait.help.as_deref(), Some("Time \\ spent\n\"here\""));
        assert_eq!(wait.unit.as_deref(), Some("seconds"));
    }
}
