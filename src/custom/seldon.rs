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

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::RwLock;

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::{CustomMetrics, TENANT_LABEL};
use crate::naming::sanitize_name;
use crate::record::{Refusal, SeriesHandle};
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

/// A JSON value borrowed from the request body. A `serde_json::Value` allocated a `String`
/// for every key and text and a map per object (a quarter of a post's instructions went to
/// building it); here texts point into the body unless they hold escapes, and an object is a
/// list of its fields. Lenient on purpose: each metric is checked field by field below, so
/// that one bad metric is refused alone and named.
#[derive(Debug, Default, PartialEq)]
pub enum Json<'a> {
    /// Not in the body (as against `null`).
    #[default]
    Absent,
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Fields in body order; a repeated key's last value counts, as in `serde_json`.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|f| &f.1),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(text) => Some(text),
            _ => None,
        }
    }

    /// The value as `serde_json` writes it (a tag that is not a string becomes its JSON text).
    fn to_value(&self) -> Value {
        match self {
            Json::Absent | Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::Str(text) => Value::String(text.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor(PhantomData))
    }
}

struct JsonVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for JsonVisitor<'a> {
    type Value = Json<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'a>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'a>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'a>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json<'a>, E> {
        Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'a>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'a>, A::Error> {
        let mut fields = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            fields.push((key, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

/// An object key, borrowed when it holds no escapes (serde's own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_str(JsonVisitor(PhantomData))? {
            Json::Str(text) => Ok(Key(text)),
            _ => Err(de::Error::custom("an object key must be a string")),
        }
    }
}

/// The parts of a Seldon body tallyd reads; the rest (a SeldonMessage's `data`, which may be
/// large) is skipped without being built.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SeldonBody<'a> {
    #[serde(borrow, default, rename = "seldonMessages")]
    seldon_messages: Json<'a>,
    #[serde(borrow, default)]
    metrics: Json<'a>,
    #[serde(borrow, default)]
    meta: Json<'a>,
}

impl<'a> SeldonBody<'a> {
    /// Parses a body: `Ok(None)` for JSON that is not an object, `Err` for bytes that are not
    /// JSON.
    pub fn parse(bytes: &'a [u8]) -> Result<Option<SeldonBody<'a>>, serde_json::Error> {
        // The body is checked as UTF-8 once, whole: read from bytes, serde_json checks each
        // string on its own, one call per key and text (a sixth of a post's parse). Bytes that
        // are not UTF-8 are not JSON: `from_slice` into a tree, which reads every string,
        // names where.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return serde_json::from_slice::<Json>(bytes).map(|_| None);
        };
        // A struct takes a JSON array too (its fields in order): only objects go that way.
        if text.trim_ascii_start().starts_with('{')
            && let Ok(body) = serde_json::from_str::<SeldonBody>(text)
        {
            return Ok(Some(body));
        }
        // Whatever the struct refused (a repeated key, say) is read as a whole tree, as a
        // `serde_json::Value` would have been.
        let mut whole = match serde_json::from_str::<Json>(text)? {
            Json::Object(fields) => fields,
            _ => return Ok(None),
        };
        let mut body = SeldonBody::default();
        // The last of a repeated key counts: taken from the end, the first found is kept.
        while let Some((key, value)) = whole.pop() {
            let slot = match key.as_ref() {
                "seldonMessages" => &mut body.seldon_messages,
                "metrics" => &mut body.metrics,
                "meta" => &mut body.meta,
                _ => continue,
            };
            if *slot == Json::Absent {
                *slot = value;
            }
        }
        Ok(Some(body))
    }
}

/// The metrics of a body: a SeldonMessage, a SeldonMessageList or `{"metrics": [...]}`, each
/// with where it sits. `Err` when the body is none of them.
pub fn metrics_of<'b, 'a>(body: &'b SeldonBody<'a>) -> Result<Vec<(Place, &'b Json<'a>)>, String> {
    match &body.seldon_messages {
        Json::Absent => {}
        Json::Array(messages) => {
            let mut all = Vec::new();
            for (i, message) in messages.iter().enumerate() {
                all.extend(meta_metrics(Some(i), message.get("meta"))?);
            }
            return Ok(all);
        }
        _ => return Err("seldonMessages is not an array".into()),
    }
    if body.metrics != Json::Absent {
        return listed(None, "metrics", &body.metrics);
    }
    if body.meta != Json::Absent {
        return meta_metrics(None, Some(&body.meta));
    }
    Err("the body has neither meta.metrics, seldonMessages nor metrics".into())
}

/// The `metrics` of one SeldonMessage's `meta`; a message without metrics carries none.
fn meta_metrics<'b, 'a>(
    message: Option<usize>,
    meta: Option<&'b Json<'a>>,
) -> Result<Vec<(Place, &'b Json<'a>)>, String> {
    match meta.and_then(|meta| meta.get("metrics")) {
        Some(metrics) => listed(message, "meta.metrics", metrics),
        None => Ok(Vec::new()),
    }
}

fn listed<'b, 'a>(
    message: Option<usize>,
    list: &'static str,
    metrics: &'b Json<'a>,
) -> Result<Vec<(Place, &'b Json<'a>)>, String> {
    match metrics {
        Json::Array(items) => Ok(items
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
    pub fn record_seldon(&self, tenant: &str, metrics: &[(Place, &Json<'_>)]) -> SeldonAnswer {
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
                    key: metric.get("key").and_then(Json::as_str).map(str::to_owned),
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
        metric: &Json<'_>,
    ) -> Result<Option<String>, (&'static str, String)> {
        let key = match metric.get("key") {
            Some(Json::Str(key)) if !key.trim().is_empty() => key.as_ref(),
            _ => {
                return Err((
                    "invalid_key",
                    "a metric needs a non-empty string \"key\"".into(),
                ));
            }
        };
        let value = metric.get("value").and_then(Json::as_f64).ok_or_else(|| {
            (
                "invalid_value",
                format!("{key:?}: \"value\" must be a number"),
            )
        })?;
        let kind_name = match metric.get("type") {
            None | Some(Json::Null) => "COUNTER",
            Some(Json::Str(name)) => name.as_ref(),
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
        let tags = match metric.get("tags") {
            None | Some(Json::Null) => &[][..],
            Some(Json::Object(fields)) => fields.as_slice(),
            Some(_) => {
                return Err((
                    "invalid_tags",
                    format!("{key:?}: \"tags\" must be an object"),
                ));
            }
        };
        let now = self.recorder.registry().now_secs();
        let generation = self.definitions_generation();
        CACHE_KEY.with_borrow_mut(|cache_key| {
            cache_key_into(cache_key, tenant, key, kind, tags);
            if let Some(found) = self.seldon_series.find(cache_key, generation, now) {
                self.recorder
                    .apply(&found.handle, update)
                    .map_err(|refusal| refused(key, refusal))?;
                return Ok(found.warning.as_deref().map(str::to_owned));
            }
            let tags = tag_labels(tags);
            let (handle, warning) = self.find_seldon_series(tenant, key, kind, tags, update)?;
            let found = Found {
                handle,
                warning: warning.as_deref().map(Arc::from),
            };
            self.seldon_series.keep(cache_key, generation, found);
            Ok(warning)
        })
    }

    /// The slow way to a Seldon metric's series, recording `update` into it: the tags folded
    /// into the tenant's definition (a warning names those dropped), then the series found or
    /// made by the recorder.
    fn find_seldon_series(
        &self,
        tenant: &str,
        key: &str,
        kind: Kind,
        mut tags: BTreeMap<&str, Cow<'_, str>>,
        update: Update,
    ) -> Result<(SeriesHandle, Option<String>), (&'static str, String)> {
        let family = sanitize_name(key);
        let mut warning = None;
        if let Some(declared) = self.declared_labels(tenant, &family, kind) {
            let known = |tag: &str| declared.iter().any(|d| d == tag);
            let dropped: Vec<&str> = tags.keys().copied().filter(|tag| !known(tag)).collect();
            if !dropped.is_empty() {
                tags.retain(|tag, _| known(tag));
                warning = Some(format!(
                    "{key:?}: tags [{}] are not among the metric's labels [{}] and were dropped",
                    dropped.join(", "),
                    declared.join(", ")
                ));
            }
        }
        let labels = tags
            .iter()
            .map(|(k, v)| (*k, v.as_ref()))
            .chain(std::iter::once((TENANT_LABEL, tenant)));
        let handle = self
            .recorder
            .record(&family, kind, labels, update)
            .map_err(|refusal| refused(key, refusal))?;
        Ok((handle, warning))
    }
}

/// Why a metric's update was not recorded, as the answer names it.
fn refused(key: &str, refusal: Refusal) -> (&'static str, String) {
    (
        refusal.label(),
        format!("{key:?}: {}", refusal.label().replace('_', " ")),
    )
}

/// Series handles by what a Seldon post says of a metric: its tenant, key, type and tags.
///
/// A Seldon model posts the same few metrics with every response. Finding their series each
/// time (the name sanitised, the tags folded into the tenant's definition, the series key
/// built, the registry searched) took more of a post's instructions than reading its JSON.
/// An entry stands while the definitions it was worked out under are unchanged (the
/// generations of [`CustomMetrics::definitions_generation`]) and while its series lives (the
/// handle's `touch`); failing either, the metric takes the slow way again.
#[derive(Default)]
pub(super) struct SeriesCache {
    entries: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    /// The definitions' generations the entries were worked out under.
    generation: (u64, u64),
    by_metric: hashbrown::HashMap<Box<[u8]>, Found>,
}

/// A metric's series, and the warning recording into it gives.
#[derive(Clone)]
struct Found {
    handle: SeriesHandle,
    warning: Option<Arc<str>>,
}

/// Entries kept at most: tags are the poster's and may vary without end, so past this the
/// cache starts again.
const CACHED_SERIES: usize = 65_536;

thread_local! {
    /// The buffer a metric's cache key is written in, one per thread.
    static CACHE_KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A metric's tags as labels: the last of a repeated name counts, a `null` unsets the name,
/// and a value that is not a string is its JSON text.
fn tag_labels<'t>(tags: &'t [(Cow<'_, str>, Json<'_>)]) -> BTreeMap<&'t str, Cow<'t, str>> {
    let mut labels = BTreeMap::new();
    for (name, value) in tags {
        let value = match value {
            Json::Str(text) => Cow::Borrowed(text.as_ref()),
            Json::Null => {
                labels.remove(name.as_ref());
                continue;
            }
            other => Cow::Owned(other.to_value().to_string()),
        };
        labels.insert(name.as_ref(), value);
    }
    labels
}

/// Writes the cache key of a metric: its type, tenant, key and tags as posted (in the post's
/// order, before [`tag_labels`] reads them, so that a hit need not). Each text goes with its
/// length before it, and each tag value with what it is, so no two posts share a key unless
/// they say the same.
fn cache_key_into(
    out: &mut Vec<u8>,
    tenant: &str,
    key: &str,
    kind: Kind,
    tags: &[(Cow<'_, str>, Json<'_>)],
) {
    fn text(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.clear();
    text(out, kind.name());
    text(out, tenant);
    text(out, key);
    for (name, value) in tags {
        text(out, name);
        match value {
            Json::Str(value) => {
                out.push(b's');
                text(out, value);
            }
            Json::Null => out.push(b'0'),
            other => {
                out.push(b'j');
                text(out, &other.to_value().to_string());
            }
        }
    }
}

impl SeriesCache {
    /// The entry for `key`, if it was worked out under `generation` and its series still
    /// lives (marked used at `now`).
    fn find(&self, key: &[u8], generation: (u64, u64), now: u32) -> Option<Found> {
        let entries = self.entries.read();
        if entries.generation != generation {
            return None;
        }
        let found = entries.by_metric.get(key)?;
        found.handle.touch(now).then(|| found.clone())
    }

    /// Keeps `found` for `key`, worked out under `generation`; dropped if the entries are
    /// already newer.
    fn keep(&self, key: &[u8], generation: (u64, u64), found: Found) {
        let mut entries = self.entries.write();
        if entries.generation != generation {
            let (definitions, catalog) = entries.generation;
            if generation.0 < definitions || generation.1 < catalog {
                return;
            }
            entries.generation = generation;
            entries.by_metric.clear();
        }
        if entries.by_metric.len() >= CACHED_SERIES {
            entries.by_metric.clear();
        }
        entries.by_metric.insert(key.into(), found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(body: &str) -> Result<Vec<String>, String> {
        let body = SeldonBody::parse(body.as_bytes())
            .unwrap()
            .ok_or("not an object")?;
        Ok(metrics_of(&body)?
            .iter()
            .map(|(at, metric)| {
                format!(
                    "{at} {}",
                    metric.get("key").and_then(Json::as_str).unwrap_or("-")
                )
            })
            .collect())
    }

    #[test]
    fn the_three_shapes_give_their_metrics_with_places() {
        let message =
            r#"{"data": {"ndarray": [[1, 2]]}, "meta": {"metrics": [{"key": "a"}, {"key": "b"}]}}"#;
        assert_eq!(
            places(message).unwrap(),
            ["meta.metrics[0] a", "meta.metrics[1] b"]
        );
        let list = r#"{"seldonMessages": [{"data": 1}, {"meta": {"metrics": [{"key": "c"}]}}]}"#;
        assert_eq!(
            places(list).unwrap(),
            ["seldonMessages[1].meta.metrics[0] c"]
        );
        assert_eq!(
            places(r#"{"metrics": [{"key": "d"}]}"#).unwrap(),
            ["metrics[0] d"]
        );
        // A message whose meta is null or has no metrics carries none.
        assert_eq!(places(r#"{"meta": null}"#).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn bodies_of_no_known_shape_are_named() {
        assert_eq!(places("[1]"), Err("not an object".into()));
        assert_eq!(places("  3"), Err("not an object".into()));
        assert_eq!(
            places(r#"{"x": 1}"#),
            Err("the body has neither meta.metrics, seldonMessages nor metrics".into())
        );
        assert_eq!(
            places(r#"{"seldonMessages": null}"#),
            Err("seldonMessages is not an array".into())
        );
        assert_eq!(
            places(r#"{"seldonMessages": [{"meta": {"metrics": 5}}]}"#),
            Err("seldonMessages[0].meta.metrics is not an array".into())
        );
        assert!(SeldonBody::parse(b"{not json").is_err());
        assert!(SeldonBody::parse(br#"{"meta": {}} x"#).is_err());
        // Bytes that are not UTF-8 are not JSON, in a string or outside one.
        assert!(SeldonBody::parse(b"{\"meta\": {\"metrics\": [{\"key\": \"\xff\"}]}}").is_err());
        assert!(SeldonBody::parse(b"\xfe{}").is_err());
    }

    #[test]
    fn texts_without_escapes_point_into_the_body() {
        let bytes = br#"{"metrics": [{"key": "plain", "tags": {"m": "v\"q"}}]}"#;
        let body = SeldonBody::parse(bytes).unwrap().unwrap();
        let metric = metrics_of(&body).unwrap()[0].1;
        assert!(matches!(
            metric.get("key"),
            Some(Json::Str(Cow::Borrowed("plain")))
        ));
        let tag = metric.get("tags").and_then(|t| t.get("m"));
        assert!(matches!(tag, Some(Json::Str(Cow::Owned(text))) if text == "v\"q"));
    }

    #[test]
    fn cache_keys_tell_apart_every_metric_a_post_can_name() {
        let metrics = [
            ("t", "ab", Kind::Counter, r#"{}"#),
            ("ta", "b", Kind::Counter, r#"{}"#),
            ("t", "ab", Kind::Gauge, r#"{}"#),
            ("t", "ab", Kind::Counter, r#"{"m": "x"}"#),
            ("t", "ab", Kind::Counter, r#"{"m": "\"x\""}"#),
            ("t", "ab", Kind::Counter, r#"{"m": "1"}"#),
            ("t", "ab", Kind::Counter, r#"{"m": 1}"#),
            ("t", "ab", Kind::Counter, r#"{"m": null}"#),
            ("t", "ab", Kind::Counter, r#"{"m": "x", "m": null}"#),
            ("t", "ab", Kind::Counter, r#"{"mx": ""}"#),
            ("t", "ab", Kind::Counter, r#"{"m": "x", "n": "y"}"#),
            ("t", "ab", Kind::Counter, r#"{"n": "y", "m": "x"}"#),
        ];
        let key = |(tenant, key, kind, tags): (&str, &str, Kind, &str)| {
            let tags: Json = serde_json::from_str(tags).unwrap();
            let Json::Object(tags) = tags else { panic!() };
            let mut out = Vec::new();
            cache_key_into(&mut out, tenant, key, kind, &tags);
            out
        };
        let keys: Vec<Vec<u8>> = metrics.into_iter().map(key).collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(key(metrics[3]), keys[3]);
    }

    #[test]
    fn tags_become_labels_the_last_of_a_name_counting_and_null_unsetting() {
        let Json::Object(tags) = serde_json::from_str(
            r#"{"a": "1", "b": 2, "a": "3", "c": "x", "c": null, "d": [true]}"#,
        )
        .unwrap() else {
            panic!()
        };
        let labels: Vec<(&str, String)> = tag_labels(&tags)
            .into_iter()
            .map(|(name, value)| (name, value.into_owned()))
            .collect();
        assert_eq!(
            labels,
            [("a", "3".into()), ("b", "2".into()), ("d", "[true]".into())]
        );
    }

    #[test]
    fn a_repeated_key_counts_its_last_value_as_serde_json_does() {
        let body = r#"{"metrics": [{"key": "x"}], "metrics": [{"key": "y"}, {"key": "z"}]}"#;
        assert_eq!(places(body).unwrap(), ["metrics[0] y", "metrics[1] z"]);
        let value: Value = serde_json::from_str(r#"{"k": 1, "k": [true, {"a": 2.5}]}"#).unwrap();
        let json: Json = serde_json::from_str(r#"{"k": 1, "k": [true, {"a": 2.5}]}"#).unwrap();
        assert_eq!(json.get("k").unwrap().to_value(), value["k"]);
    }
}
