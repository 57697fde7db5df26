//! The write seam: the one way any input — StatsD lines today, JSON over HTTP next — records a
//! value into the registry.
//!
//! An input names a family, a [`Kind`], label pairs and an [`Update`]; [`Recorder`] does the
//! Prometheus side of the work every input needs, in one place:
//!
//! - **names**: the family must be a valid metric name (an input sanitises or refuses its own
//!   names first, by its own rules); a counter's family drops its `_total`s
//!   ([`crate::naming::counter_family`]); tallyd's own names (`tallyd_*`, `process_*`) are
//!   refused;
//! - **labels**: names sanitised and the reserved ones (`le`, `quantile`, `__*`) renamed
//!   `exported_…` ([`crate::naming::label_name_into`]), the last of two labels with one name
//!   wins, values kept verbatim;
//! - **definitions** ([`crate::definitions`]): the declared kind (a declared summary takes a
//!   histogram's observations; any other difference is a type conflict), the label schema
//!   (undeclared labels are dropped, and the handle says so), and the declared help, unit,
//!   buckets, summary window and TTL over what the input asked for;
//! - **the registry**: type conflicts between families and the series limits.
//!
//! What comes back is a [`SeriesHandle`] an input may keep and update again without any of the
//! above (StatsD keeps one per raw line shape), or a [`Refusal`] with the reason.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::definitions::{Definition, DefinitionError, Definitions, Source};
use crate::naming::{counter_family, is_metric_name, label_name_into};
use crate::registry::{Kind, Registry, Series, SeriesKeyBuf, SeriesOptions, Update};
use crate::telemetry::is_reserved_name;

/// The label that names the tenant of a series recorded through the API.
pub const TENANT_LABEL: &str = "tenant";

crate::closed_set! {
    /// Why a well-formed sample was not recorded (or recorded only in part). A closed set,
    /// exported with the wire reasons ([`crate::protocol::Reason`]) as
    /// `tallyd_sample_errors_total{reason="<label>"}`.
    Refusal;
    /// The name is already registered with another type: the sample is refused.
    TypeConflict => "type_conflict",
    /// A name that is not a valid metric name (or empty after sanitising), or that takes one of
    /// tallyd's own names (`tallyd_*`, `process_*`).
    InvalidName => "invalid_name",
    /// A set already holds its maximum number of distinct members: the new member is dropped.
    SetFull => "set_full",
    /// A new series would pass the global or the per-metric series cap: the sample is refused
    /// (existing series keep updating). Details in `tallyd_series_refused_total{reason}`.
    SeriesLimit => "series_limit",
    /// An input's mapping rule with `action = "drop"` matched: dropped as configured, counted to
    /// be seen.
    DroppedByRule => "dropped_by_rule",
    /// Labels whose names are not in the metric's declared `labels`: those labels are dropped,
    /// the sample is kept. Counted once per sample.
    LabelNotInSchema => "label_not_in_schema",
    /// A value that is NaN or ±Inf.
    NonFiniteValue => "non_finite_value",
    /// A counter increment below zero.
    NegativeCounter => "negative_counter",
}

/// A series an input may keep and update again; see [`Recorder::series`].
#[derive(Clone, Debug)]
pub struct SeriesHandle {
    series: Arc<Series>,
    /// The metric's label schema dropped some of the labels asked for: count
    /// [`Refusal::LabelNotInSchema`] on every update through this handle, not just the first.
    drops_labels: bool,
}

impl SeriesHandle {
    /// True when the label schema dropped labels the input gave.
    pub fn drops_labels(&self) -> bool {
        self.drops_labels
    }

    /// Marks the series as used at `now` (registry clock); `false` means expiry or a changed
    /// definition removed it since the handle was made, and the input must ask for it again.
    pub fn touch(&self, now: u32) -> bool {
        self.series.touch(now)
    }

    pub fn series(&self) -> &Arc<Series> {
        &self.series
    }
}

thread_local! {
    /// The key buffer [`Recorder::record`] assembles identities in, one per thread.
    static KEY: RefCell<SeriesKeyBuf> = RefCell::default();
}

/// The write seam over one registry and its definitions. Shared (`&self`) by every input.
pub struct Recorder {
    registry: Arc<Registry>,
    definitions: Arc<Definitions>,
}

impl Recorder {
    pub fn new(registry: Arc<Registry>, definitions: Arc<Definitions>) -> Self {
        Recorder {
            registry,
            definitions,
        }
    }

    /// A recorder over `registry` with no definitions (for tests, benchmarks and tools).
    pub fn for_registry(registry: &Arc<Registry>) -> Arc<Recorder> {
        Arc::new(Recorder::new(Arc::clone(registry), Arc::default()))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.definitions
    }

    /// Records one update: the series for `family`, `kind` and `labels` (created if new), then
    /// `update` applied to it. For inputs that record a value now and then; an input with a
    /// hot path keeps the handle of [`Recorder::series`] instead.
    pub fn record<'l>(
        &self,
        family: &str,
        kind: Kind,
        labels: impl IntoIterator<Item = (&'l str, &'l str)> + Clone,
        update: Update,
    ) -> Result<SeriesHandle, Refusal> {
        KEY.with_borrow_mut(|key| {
            let options = SeriesOptions::default();
            let now = self.registry.now_secs();
            let mut handle = self.series(family, kind, labels.clone(), &options, key)?;
            if !handle.touch(now) {
                // Removed (expiry, a changed definition) between the lookup and the touch: a
                // second lookup creates its successor.
                handle = self.series(family, kind, labels, &options, key)?;
                handle.touch(now);
            }
            self.apply(&handle, update)?;
            Ok(handle)
        })
    }

    /// The series for `family`, `kind` and `labels`, created if new with `options` (which a
    /// definition overrides), or why it cannot be. `labels` go in priority order: of two with
    /// one name, the later wins. `key` is the caller's reusable buffer; a lookup of an existing
    /// series allocates nothing once it has grown to size.
    pub fn series<'l>(
        &self,
        family: &str,
        kind: Kind,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        options: &SeriesOptions,
        key: &mut SeriesKeyBuf,
    ) -> Result<SeriesHandle, Refusal> {
        let family = match kind {
            Kind::Counter => counter_family(family),
            _ => family,
        };
        if !is_metric_name(family) || is_reserved_name(family) {
            return Err(Refusal::InvalidName);
        }
        let mut kind = kind;
        key.start(kind).push_str(family);
        key.end_family();
        for (name, value) in labels {
            key.push_label(|out| label_name_into(name, out), value);
        }
        key.options = options.clone();
        let mut drops_labels = false;
        if let Some(definition) = self.definitions.get(family) {
            // A declared summary takes the observations a histogram would.
            if kind == Kind::Histogram && definition.kind == Kind::Summary {
                kind = Kind::Summary;
            }
            if definition.kind != kind {
                return Err(Refusal::TypeConflict);
            }
            if let Some(schema) = &definition.labels {
                // `tenant` is tallyd's own label on API-ingested series: no schema drops it.
                drops_labels = key.retain_labels(|name| {
                    name == TENANT_LABEL || schema.iter().any(|l| &**l == name)
                }) > 0;
            }
            // The declaration wins over the input for what both say.
            let declared = &definition.options;
            let options = &mut key.options;
            options.buckets = declared.buckets.clone().or(options.buckets.take());
            options.help = declared.help.clone().or(options.help.take());
            options.unit = declared.unit.clone();
            options.ttl_secs = declared.ttl_secs.or(options.ttl_secs);
            options.summary = declared.summary.clone().or(options.summary.take());
            options.native = declared.native.or(options.native);
        }
        key.set_kind(kind);
        key.finish();
        let series = self.registry.resolve(key)?;
        Ok(SeriesHandle {
            series,
            drops_labels,
        })
    }

    /// Applies `update` to a handle's series. Lock-free for every kind but sets and summaries.
    #[inline]
    pub fn apply(&self, handle: &SeriesHandle, update: Update) -> Result<(), Refusal> {
        handle.series.apply(update, self.registry.settings())
    }

    /// Puts `definitions` in force as the whole set of `source` (see
    /// [`Definitions::replace_source`]) and starts afresh every family whose definition
    /// changed, so that no family mixes two shapes: its values restart from zero, as after a
    /// restart. Families whose definition is unchanged keep their series. Returns the names of
    /// the families removed.
    pub fn replace_definitions(
        &self,
        source: Source,
        definitions: HashMap<Box<str>, Arc<Definition>>,
    ) -> Result<Vec<String>, DefinitionError> {
        let changed = self.definitions.replace_source(source, definitions)?;
        Ok(changed
            .into_iter()
            .filter(|name| self.reset_family(name))
            .collect())
    }

    /// Adds or replaces the definition of `name` for `source` (the API's one-at-a-time change).
    /// If it differs from the one it replaces, the family starts afresh under it.
    pub fn define(
        &self,
        source: Source,
        name: &str,
        definition: Definition,
    ) -> Result<(), DefinitionError> {
        let previous = self.definitions.insert(source, name, definition.clone())?;
        if previous.as_deref() != Some(&definition) {
            self.reset_family(name);
        }
        Ok(())
    }

    /// Removes the definition of `name`, which `source` must own, and the family's series with
    /// it: a deleted metric leaves `/metrics` at once (a later sample creates it afresh,
    /// undeclared).
    pub fn undefine(&self, source: Source, name: &str) -> Result<(), DefinitionError> {
        self.definitions.remove(source, name)?;
        self.reset_family(name);
        Ok(())
    }

    /// Starts family `name` afresh: it and its series are removed, and its next sample creates
    /// it again (under its definition as it then stands). False if there was no such family.
    pub fn reset_family(&self, name: &str) -> bool {
        self.registry.remove_family(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{self, Value};
    use crate::registry::RegistrySettings;

    fn recorder() -> Arc<Recorder> {
        Recorder::for_registry(&Arc::new(Registry::new(RegistrySettings::default())))
    }

    /// Every series of `family` as (label pairs, value), through the read seam.
    fn values(recorder: &Recorder, family: &str) -> Vec<(Vec<(String, String)>, Value)> {
        read::snapshot(recorder.registry())
            .into_iter()
            .filter(|f| f.name == family)
            .flat_map(|f| f.series)
            .map(|s| (s.labels, s.value))
            .collect()
    }

    fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_counter_adds_and_drops_its_total_suffix() {
        let recorder = recorder();
        let labels = [("model", "v1")];
        recorder
            .record("jobs_total", Kind::Counter, labels, Update::Add(2.0))
            .unwrap();
        recorder
            .record("jobs", Kind::Counter, labels, Update::Add(3.0))
            .unwrap();
        assert_eq!(
            values(&recorder, "jobs"),
            [(pairs(&labels), Value::Counter(5.0))]
        );
    }

    #[test]
    fn label_order_does_not_matter_and_the_last_duplicate_wins() {
        let recorder = recorder();
        let a = recorder
            .record("g", Kind::Gauge, [("b", "2"), ("a", "1")], Update::Set(1.0))
            .unwrap();
        let b = recorder
            .record(
                "g",
                Kind::Gauge,
                [("a", "0"), ("b", "2"), ("a", "1")],
                Update::Set(7.0),
            )
            .unwrap();
        assert!(Arc::ptr_eq(a.series(), b.series()));
        assert_eq!(
            values(&recorder, "g"),
            [(pairs(&[("a", "1"), ("b", "2")]), Value::Gauge(7.0))]
        );
    }

    #[test]
    fn reserved_label_names_are_renamed_and_others_sanitised() {
        let recorder = recorder();
        recorder
            .record(
                "g",
                Kind::Gauge,
                [("le", "x"), ("model.version", "2")],
                Update::Set(1.0),
            )
            .unwrap();
        assert_eq!(
            values(&recorder, "g")[0].0,
            pairs(&[("exported_le", "x"), ("model_version", "2")])
        );
    }

    #[test]
    fn invalid_and_reserved_names_are_refused() {
        let recorder = recorder();
        for name in ["", "1x", "a b", "tallyd_lines", "process_open_fds", "é"] {
            let refused = recorder.record(name, Kind::Gauge, [], Update::Set(1.0));
            assert_eq!(refused.unwrap_err(), Refusal::InvalidName, "{name:?}");
        }
    }

    #[test]
    fn a_second_kind_for_a_family_is_a_type_conflict() {
        let recorder = recorder();
        recorder
            .record("x", Kind::Counter, [], Update::Add(1.0))
            .unwrap();
        let refused = recorder.record("x", Kind::Gauge, [], Update::Set(1.0));
        assert_eq!(refused.unwrap_err(), Refusal::TypeConflict);
    }

    #[test]
    fn values_a_series_cannot_take_are_refused() {
        let recorder = recorder();
        let refused = recorder.record("c", Kind::Counter, [], Update::Add(-1.0));
        assert_eq!(refused.unwrap_err(), Refusal::NegativeCounter);
        let refused = recorder.record("g", Kind::Gauge, [], Update::Set(f64::NAN));
        assert_eq!(refused.unwrap_err(), Refusal::NonFiniteValue);
    }

    fn define(recorder: &Recorder, name: &str, definition: Definition) {
        recorder.define(Source::Api, name, definition).unwrap();
    }

    #[test]
    fn a_definition_sets_the_kind_schema_and_help() {
        let recorder = recorder();
        define(
            &recorder,
            "latency_seconds",
            Definition {
                kind: Kind::Summary,
                labels: Some(["model".into()].into()),
                options: SeriesOptions {
                    help: Some("Latency.".into()),
                    ..SeriesOptions::default()
                },
                aggregation: None,
            },
        );
        let handle = recorder
            .record(
                "latency_seconds",
                Kind::Histogram,
                [("model", "a"), ("pod", "p1")],
                Update::Observe {
                    value: 0.5,
                    weight: 1,
                },
            )
            .unwrap();
        assert!(handle.drops_labels());
        let family = read::snapshot(recorder.registry())
            .into_iter()
            .find(|f| f.name == "latency_seconds")
            .unwrap();
        assert_eq!(family.kind, Kind::Summary);
        assert_eq!(family.help.as_deref(), Some("Latency."));
        assert_eq!(family.series[0].labels, pairs(&[("model", "a")]));
        let refused = recorder.record("latency_seconds", Kind::Gauge, [], Update::Set(1.0));
        assert_eq!(refused.unwrap_err(), Refusal::TypeConflict);
    }

    #[test]
    fn redefining_a_metric_starts_it_afresh_and_undefining_removes_its_series() {
        let recorder = recorder();
        let gauge = crate::definitions::tests::gauge;
        define(&recorder, "depth", gauge("Depth."));
        recorder
            .record("depth", Kind::Gauge, [("q", "a")], Update::Set(3.0))
            .unwrap();
        // The same definition again keeps the series.
        define(&recorder, "depth", gauge("Depth."));
        assert_eq!(values(&recorder, "depth").len(), 1);
        // Another one starts the family afresh.
        define(&recorder, "depth", gauge("Queue depth."));
        assert!(values(&recorder, "depth").is_empty());
        recorder
            .record("depth", Kind::Gauge, [("q", "a")], Update::Set(4.0))
            .unwrap();
        recorder.undefine(Source::Api, "depth").unwrap();
        assert!(values(&recorder, "depth").is_empty());
        assert!(recorder.definitions().get("depth").is_none());
        // A file's definition is not the API's to change.
        recorder
            .replace_definitions(
                Source::File,
                [("fixed".into(), Arc::new(gauge("F.")))].into(),
            )
            .unwrap();
        assert!(recorder.undefine(Source::Api, "fixed").is_err());
        assert!(recorder.define(Source::Api, "fixed", gauge("G.")).is_err());
    }

    #[test]
    fn a_kept_handle_updates_without_a_lookup_until_its_family_is_reset() {
        let recorder = recorder();
        let handle = recorder
            .series(
                "hits",
                Kind::Counter,
                [("a", "b")],
                &SeriesOptions::default(),
                &mut SeriesKeyBuf::default(),
            )
            .unwrap();
        for _ in 0..3 {
            recorder.apply(&handle, Update::Add(1.0)).unwrap();
        }
        assert_eq!(values(&recorder, "hits")[0].1, Value::Counter(3.0));
        assert!(recorder.reset_family("hits"));
        assert!(!handle.touch(recorder.registry().now_secs()));
        assert!(values(&recorder, "hits").is_empty());
    }
}
