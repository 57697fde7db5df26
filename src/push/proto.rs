//! Protobuf push bodies: length-delimited `io.prometheus.client.MetricFamily` messages
//! (`Content-Type: application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//! encoding=delimited`), what Go's `push` package and Java's client send.
//!
//! The messages are the exposition's ([`crate::exposition::proto`]); a push reads only the
//! fields it uses and ignores the others (exemplars, created timestamps, units). The
//! checks are the text format's (see `super::text`): no timestamps, no series twice, values
//! through [`super::model`]. Native histogram buckets are not read: a histogram with native
//! buckets only is refused, one with classic buckets too keeps those.

use prost::Message;

use crate::exposition::proto::{Metric, MetricFamily};

use super::model::{self, BodyError, Place, PushedFamily, PushedKind, PushedSeries, is_label_name};

/// The `Content-Type` essence and parameters that mark a delimited protobuf body.
pub fn is_delimited_protobuf(content_type: &str) -> bool {
    let mut parts = content_type.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|essence| essence.eq_ignore_ascii_case("application/vnd.google.protobuf"))
    {
        return false;
    }
    let (mut proto, mut delimited) = (false, false);
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = value == "io.prometheus.client.MetricFamily",
            "encoding" => delimited = value == "delimited",
            _ => {}
        }
    }
    proto && delimited
}

/// Reads a whole delimited protobuf body.
pub fn parse(mut body: &[u8]) -> Result<Vec<PushedFamily>, BodyError> {
    let mut out: Vec<PushedFamily> = Vec::new();
    let mut index = 0;
    while !body.is_empty() {
        index += 1;
        let whole = Place::Message {
            family: index,
            metric: 0,
        };
        let family = MetricFamily::decode_length_delimited(&mut body)
            .map_err(|e| BodyError::at(whole, format!("not a delimited MetricFamily: {e}")))?;
        let name = family.name.clone().unwrap_or_default();
        if !crate::naming::is_metric_name(&name) {
            return Err(BodyError::at(
                whole,
                format!("{name:?} is not a metric name"),
            ));
        }
        if out.iter().any(|f| f.name == name) {
            return Err(BodyError::at(whole, format!("{name} is sent twice")));
        }
        let kind = match family.r#type.unwrap_or(0) {
            0 => PushedKind::Counter,
            1 => PushedKind::Gauge,
            2 => PushedKind::Summary,
            3 => PushedKind::Untyped,
            4 => PushedKind::Histogram,
            5 => {
                return Err(BodyError::at(
                    whole,
                    format!("{name} is a gauge histogram, which tallyd does not take"),
                ));
            }
            other => return Err(BodyError::at(whole, format!("unknown metric type {other}"))),
        };
        let mut series: Vec<PushedSeries> = Vec::with_capacity(family.metric.len());
        for (i, metric) in family.metric.into_iter().enumerate() {
            let at = Place::Message {
                family: index,
                metric: i + 1,
            };
            let pushed = read_metric(metric, kind, at)
                .map_err(|message| BodyError::at(at, format!("{name}: {message}")))?;
            if let Some(first) = series.iter().find(|s| s.labels == pushed.labels) {
                return Err(BodyError::at(
                    at,
                    format!(
                        "{name} with these labels is sent twice (first at {})",
                        first.at
                    ),
                ));
            }
            series.push(pushed);
        }
        if !series.is_empty() {
            out.push(PushedFamily {
                name,
                kind,
                help: family.help,
                series,
            });
        }
    }
    Ok(out)
}

fn read_metric(metric: Metric, kind: PushedKind, at: Place) -> Result<PushedSeries, String> {
    if let Some(ms) = metric.timestamp_ms {
        return Err(format!(
            "carries a timestamp ({ms}); pushed samples may not (the push time is theirs), as \
             Pushgateway refuses them too"
        ));
    }
    let mut labels = Vec::with_capacity(metric.label.len());
    for pair in metric.label {
        let name = pair.name.unwrap_or_default();
        if !is_label_name(&name) {
            return Err(format!("{name:?} is not a label name"));
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(format!("label {name} is given twice"));
        }
        labels.push((name, pair.value.unwrap_or_default()));
    }
    labels.sort();
    let missing = || format!("a {} metric without its {} value", kind.name(), kind.name());
    let value = match kind {
        PushedKind::Counter => {
            model::counter(metric.counter.and_then(|c| c.value).ok_or_else(missing)?)?
        }
        PushedKind::Gauge => {
            model::PushedValue::Gauge(metric.gauge.and_then(|g| g.value).ok_or_else(missing)?)
        }
        PushedKind::Untyped => {
            model::PushedValue::Gauge(metric.untyped.and_then(|u| u.value).ok_or_else(missing)?)
        }
        PushedKind::Summary => {
            let summary = metric.summary.ok_or_else(missing)?;
            let quantiles = summary
                .quantile
                .iter()
                .map(|q| (q.quantile.unwrap_or(f64::NAN), q.value.unwrap_or(f64::NAN)))
                .collect();
            model::summary(
                quantiles,
                summary.sample_count.map(|c| c as f64),
                summary.sample_sum,
            )?
        }
        PushedKind::Histogram => {
            let histogram = metric.histogram.ok_or_else(missing)?;
            if histogram.bucket.is_empty() && histogram.schema.is_some() {
                return Err(
                    "a native histogram without classic buckets, which tallyd does not take yet"
                        .into(),
                );
            }
            let buckets = histogram
                .bucket
                .iter()
                .map(|b| {
                    let count = b
                        .cumulative_count
                        .map(|c| c as f64)
                        .or(b.cumulative_count_float)
                        .unwrap_or(0.0);
                    (b.upper_bound.unwrap_or(f64::NAN), count)
                })
                .collect();
            let count = histogram
                .sample_count
                .map(|c| c as f64)
                .or(histogram.sample_count_float);
            model::histogram(buckets, count, histogram.sample_sum)?
        }
    };
    Ok(PushedSeries { labels, value, at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::proto::{
        Bucket, Counter, Gauge, Histogram, LabelPair, Quantile, Summary,
    };
    use crate::push::model::{PushedHistogram, PushedValue};

    /// Pushgateway's handler test family, encoded by hand from the wire format (so this
    /// checks the field numbers, not prost against itself): `some_metric`, UNTYPED, one metric
    /// with `untyped { value: 1.234 }`.
    fn pushgateway_test_family() -> Vec<u8> {
        let mut untyped = vec![0x09]; // field 1, 64-bit
        untyped.extend_from_slice(&1.234f64.to_le_bytes());
        let mut metric = vec![0x2a, untyped.len() as u8]; // field 5, length-delimited
        metric.extend_from_slice(&untyped);
        let mut family = vec![0x0a, 11]; // field 1: name
        family.extend_from_slice(b"some_metric");
        family.extend_from_slice(&[0x18, 3]); // field 3: type UNTYPED
        family.extend_from_slice(&[0x22, metric.len() as u8]); // field 4: metric
        family.extend_from_slice(&metric);
        let mut body = vec![family.len() as u8]; // the varint length prefix
        body.extend_from_slice(&family);
        body
    }

    fn delimited(families: &[MetricFamily]) -> Vec<u8> {
        let mut out = Vec::new();
        for family in families {
            family.encode_length_delimited(&mut out).unwrap();
        }
        out
    }

    fn counter(v: f64) -> Option<Counter> {
        Some(Counter {
            value: Some(v),
            ..Counter::default()
        })
    }

    fn metric(labels: &[(&str, &str)]) -> Metric {
        Metric {
            label: labels
                .iter()
                .map(|(n, v)| LabelPair {
                    name: Some(n.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..Metric::default()
        }
    }

    #[test]
    fn a_hand_encoded_family_is_read() {
        let mut body = pushgateway_test_family();
        body.extend_from_slice(&pushgateway_test_family());
        // The same family twice is refused; once is read.
        let error = parse(&body).unwrap_err();
        assert!(error.to_string().contains("sent twice"), "{error}");
        let families = parse(&pushgateway_test_family()).unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].name, "some_metric");
        assert_eq!(families[0].kind, PushedKind::Untyped);
        assert_eq!(families[0].series[0].value, PushedValue::Gauge(1.234));
    }

    #[test]
    fn every_kind_is_read_with_sorted_labels() {
        let body = delimited(&[
            MetricFamily {
                name: Some("jobs".into()),
                help: Some("Jobs.".into()),
                unit: None,
                r#type: Some(0),
                metric: vec![Metric {
                    counter: counter(3.0),
                    ..metric(&[("z", "1"), ("a", "2")])
                }],
            },
            MetricFamily {
                name: Some("lat".into()),
                help: None,
                unit: None,
                r#type: Some(4),
                metric: vec![Metric {
                    histogram: Some(Histogram {
                        sample_count: Some(5),
                        sample_sum: Some(2.5),
                        bucket: vec![
                            Bucket {
                                cumulative_count: Some(2),
                                upper_bound: Some(0.1),
                                ..Bucket::default()
                            },
                            Bucket {
                                cumulative_count: Some(4),
                                upper_bound: Some(1.0),
                                ..Bucket::default()
                            },
                        ],
                        ..Histogram::default()
                    }),
                    ..metric(&[])
                }],
            },
            MetricFamily {
                name: Some("rpc".into()),
                help: None,
                unit: None,
                r#type: Some(2),
                metric: vec![Metric {
                    summary: Some(Summary {
                        sample_count: Some(4),
                        sample_sum: Some(8.0),
                        quantile: vec![Quantile {
                            quantile: Some(0.5),
                            value: Some(1.5),
                        }],
                        ..Summary::default()
                    }),
                    ..metric(&[])
                }],
            },
        ]);
        let families = parse(&body).unwrap();
        assert_eq!(families[0].kind, PushedKind::Counter);
        assert_eq!(families[0].help.as_deref(), Some("Jobs."));
        assert_eq!(
            families[0].series[0].labels,
            [
                ("a".to_owned(), "2".to_owned()),
                ("z".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(
            families[1].series[0].value,
            PushedValue::Histogram(PushedHistogram {
                bounds: vec![0.1, 1.0],
                counts: vec![2, 2, 1],
                sum: 2.5,
            })
        );
        assert!(matches!(
            &families[2].series[0].value,
            PushedValue::Summary(s) if s.quantiles == [(0.5, 1.5)] && s.count == 4
        ));
    }

    #[test]
    fn refusals_name_the_family_and_metric() {
        let cases = [
            (
                Metric {
                    gauge: Some(Gauge { value: Some(1.0) }),
                    timestamp_ms: Some(1000),
                    ..metric(&[])
                },
                1,
                "timestamp",
            ),
            (metric(&[]), 1, "without its gauge value"),
            (
                Metric {
                    gauge: Some(Gauge { value: Some(1.0) }),
                    ..metric(&[("a-b", "1")])
                },
                1,
                "not a label name",
            ),
        ];
        for (bad, at, words) in cases {
            let body = delimited(&[MetricFamily {
                name: Some("g".into()),
                help: None,
                unit: None,
                r#type: Some(1),
                metric: vec![bad],
            }]);
            let message = parse(&body).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("metric family #1, metric #{at}: g: "))
                    && message.contains(words),
                "{message}"
            );
        }
        let native = delimited(&[MetricFamily {
            name: Some("h".into()),
            help: None,
            unit: None,
            r#type: Some(4),
            metric: vec![Metric {
                histogram: Some(Histogram {
                    schema: Some(3),
                    ..Histogram::default()
                }),
                ..metric(&[])
            }],
        }]);
        assert!(parse(&native).unwrap_err().to_string().contains("native"));
        assert!(parse(&[0x05, 0x0a]).unwrap_err().to_string().contains("#1"));
    }

    #[test]
    fn the_content_type_must_name_the_delimited_metric_family() {
        assert!(is_delimited_protobuf(
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
        ));
        assert!(is_delimited_protobuf(
            "Application/Vnd.Google.Protobuf;encoding=delimited;proto=io.prometheus.client.MetricFamily"
        ));
        assert!(!is_delimited_protobuf(
            "application/vnd.google.protobuf; encoding=delimited"
        ));
        assert!(!is_delimited_protobuf("text/plain; version=0.0.4"));
    }
}
