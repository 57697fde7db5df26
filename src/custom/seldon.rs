//! Seldon's custom metrics: the `meta.metrics` a Seldon Core model returns in its responses
//! (`{"key", "type", "value", "tags"}`), posted whole to tallyd.
//!
//! COUNTER (or no `type`: Seldon's gRPC JSON leaves out the default enum value) adds to
//! `<key>_total`, GAUGE sets `<key>`, TIMER observes milliseconds into the histogram `<key>` in
//! seconds, as a StatsD timer. Tags become labels, plus `tenant`. Seldon's own exporter needs one
//! set of tag keys per metric; here each key set is its own series of one family, or, when the
//! tenant defined the metric, tags are folded into its declared labels (extra tags dropped and
//! named in the answer's warnings). Each metric is taken or refused on its own, and the answer
//! says which and why: none goes missing silently (SeldonIO/seldon-core#4314).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::{CustomMetrics, TENANT_LABEL};
use crate::naming::sanitize_name;
use crate::registry::{Kind, Update};

/// What became of a post.
#[derive(Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeldonAnswer {
    /// Metrics recorded.
    pub accepted: usize,
    /// Metrics not recorded, each with why.
    pub refused: Vec<SeldonRefusal>,
    /// Recorded, but not all as sent (tags dropped by a definition).
    pub warnings: Vec<String>,
}

/// A metric that was not recorded, and why.
#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeldonRefusal {
    /// Where the metric sits in the body (`meta.metrics[2]`, `seldonMessages[1].meta.metrics[0]`).
    pub at: String,
    pub key: Option<String>,
    pub code: &'static str,
    pub detail: String,
}

/// Where a metric sits in a body: `meta.metrics[2]`, `seldonMessages[1].meta.metrics[0]`,
/// `metrics[0]`. Spelled out only when an answer names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The index in `seldonMessages`, for a SeldonMessageList.
    message: Option<usize>,
    list: &'static str,
    index: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(message) = self.message {
            write!(f, "seldonMessages[{message}].")?;
        }
        write!(f, "{}[{}]", self.list, self.index)
    }
}

/// The metrics of a body: a SeldonMessage, a SeldonMessageList or `{"metrics": [...]}`, each
/// with where it sits. `Err` when the body is none of them.
pub fn metrics_of(body: &Value) -> Result<Vec<(Place, &Value)>, String> {
    if !body.is_object() {
        return Err("the body must be a JSON object".into());
    }
    if let Some(messages) = body.get("seldonMessages") {
        let Value::Array(messages) = messages else {
            return Err("seldonMessages is not an array".into());
        };
        let mut all = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            all.extend(message_metrics(Some(i), message)?);
        }
        return Ok(all);
    }
    if let Some(metrics) = body.get("metrics") {
        return listed(None, "metrics", metrics);
    }
    if body.get("meta").is_some() {
        return message_metrics(None, body);
    }
    Err("the body has neither meta.metrics, seldonMessages nor metrics".into())
}

/// The `meta.metrics` of one SeldonMessage; a message without metrics carries none.
fn message_metrics(message: Option<usize>, body: &Value) -> Result<Vec<(Place, &Value)>, String> {
    match body.get("meta").and_then(|meta| meta.get("metrics")) {
        Some(metrics) => listed(message, "meta.metrics", metrics),
        None => Ok(Vec::new()),
    }
}

fn listed<'a>(
    message: Option<usize>,
    list: &'static str,
    metrics: &'a Value,
) -> Result<Vec<(Place, &'a Value)>, String> {
    match metrics {
        Value::Array(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let place = Place {
                    message,
                    list,
                    index,
                };
                (place, item)
            })
            .collect()),
        _ => {
            let mut at = String::new();
            if let Some(message) = message {
                at = format!("seldonMessages[{message}].");
            }
            Err(format!("{at}{list} is not an array"))
        }
    }
}

impl CustomMetrics {
    /// Records Seldon metrics for `tenant` into `/metrics`.
    pub fn record_seldon(&self, tenant: &str, metrics: &[(Place, &Value)]) -> SeldonAnswer {
        let mut answer = SeldonAnswer::default();
        for (at, metric) in metrics {
            match self.record_one_seldon(tenant, metric) {
                Ok(dropped) => {
                    answer.accepted += 1;
                    if let Some(warning) = dropped {
                        answer.warnings.push(format!("{at}: {warning}"));
                    }
                }
                Err((code, detail)) => answer.refused.push(SeldonRefusal {
                    at: at.to_string(),
                    key: metric.get("key").and_then(Value::as_str).map(str::to_owned),
                    code,
                    detail,
                }),
            }
        }
        answer
    }

    /// One metric: `Ok` with a warning when tags were dropped, or why it was refused.
    fn record_one_seldon(
        &self,
        tenant: &str,
        metric: &Value,
    ) -> Result<Option<String>, (&'static str, String)> {
        let key = match metric.get("key") {
            Some(Value::String(key)) if !key.trim().is_empty() => key.as_str(),
            _ => {
                return Err((
                    "invalid_key",
                    "a metric needs a non-empty string \"key\"".into(),
                ));
            }
        };
        let value = metric.get("value").and_then(Value::as_f64).ok_or_else(|| {
            (
                "invalid_value",
                format!("{key:?}: \"value\" must be a number"),
            )
        })?;
        let kind_name = match metric.get("type") {
            None | Some(Value::Null) => "COUNTER",
            Some(Value::String(name)) => name.as_str(),
            Some(_) => {
                return Err((
                    "invalid_type",
                    format!("{key:?}: \"type\" must be a string"),
                ));
            }
        };
        let (kind, update) = match kind_name {
            "COUNTER" => (Kind::Counter, Update::Add(value)),
            "GAUGE" => (Kind::Gauge, Update::Set(value)),
            "TIMER" => (
                Kind::Histogram,
                Update::Observe {
                    value: value / 1000.0,
                    weight: 1,
                },
            ),
            other => {
                return Err((
                    "invalid_type",
                    format!("{key:?}: type {other:?} is not COUNTER, GAUGE or TIMER"),
                ));
            }
        };
        let mut tags: BTreeMap<String, String> = BTreeMap::new();
        match metric.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let value = match value {
                        Value::String(text) => text.clone(),
                        Value::Null => continue,
                        other => other.to_string(),
                    };
                    tags.insert(name.clone(), value);
                }
            }
            Some(_) => {
                return Err((
                    "invalid_tags",
                    format!("{key:?}: \"tags\" must be an object"),
                ));
            }
        }
        let family = sanitize_name(key);
        let mut warning = None;
        if let Some(declared) = self.declared_labels(tenant, &family, kind) {
            let dropped: Vec<String> = tags
                .keys()
                .filter(|tag| !declared.contains(tag))
                .cloned()
                .collect();
            if !dropped.is_empty() {
                tags.retain(|tag, _| declared.contains(tag));
                warning = Some(format!(
                    "{key:?}: tags [{}] are not among the metric's labels [{}] and were dropped",
                    dropped.join(", "),
                    declared.join(", ")
                ));
            }
        }
        let labels = tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(std::iter::once((TENANT_LABEL, tenant)));
        self.recorder
            .record(&family, kind, labels, update)
            .map_err(|refusal| {
                (
                    refusal.label(),
                    format!("{key:?}: {}", refusal.label().replace('_', " ")),
                )
            })?;
        Ok(warning)
    }
}
