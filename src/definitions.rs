//! Metric definitions: what a family is before any sample arrives — its kind, help, unit, label
//! schema, buckets, summary window and TTL — gathered from every source that declares them.
//!
//! Today the config file's `[[metric]]` tables are the one source; the REST API is the next. Each
//! definition remembers its source: a source replaces its own definitions (a reload replaces the
//! file's whole set at once, an API call adds, replaces or removes one), and never another
//! source's, so an API client cannot redefine a metric the file declares.
//!
//! The table is read on the slow path only (a series seen for the first time), behind a
//! read-mostly lock; the write seam ([`crate::record`]) applies what it finds there.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::Deserialize;

use crate::registry::{Kind, SeriesOptions};

/// A declared metric: what its family is before any sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub kind: Kind,
    /// The label schema: only these label names are kept (other labels are dropped and counted
    /// as `label_not_in_schema`); a label missing from a sample is simply absent (Prometheus reads
    /// that as empty). `None` = any labels.
    pub labels: Option<Arc<[Box<str>]>>,
    /// Help, unit, buckets, summary window and TTL for the family and its series.
    pub options: SeriesOptions,
    /// How a query bins this metric's points when it names no aggregation of its own. It has
    /// no effect on `/metrics`; the query side (the REST API) reads it from here.
    pub aggregation: Option<Aggregation>,
}

/// How points are combined into one value per query step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Average,
    Sum,
    Min,
    Max,
    Last,
    Count,
}

/// Where a definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `[[metric]]` in the config file: replaced whole on reload, read-only to the API.
    File,
    /// Declared over the REST API.
    Api,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::File => "the config file",
            Source::Api => "the API",
        })
    }
}

/// Why a definition could not be changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefinitionError {
    /// The name is defined by another source, which alone may change it.
    OwnedBy { name: String, source: Source },
    /// There is no definition of that name (to remove).
    NotFound { name: String },
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefinitionError::OwnedBy { name, source } => {
                write!(
                    f,
                    "metric {name:?} is defined by {source} and cannot be changed here"
                )
            }
            DefinitionError::NotFound { name } => write!(f, "metric {name:?} is not defined"),
        }
    }
}

impl std::error::Error for DefinitionError {}

#[derive(Clone, Debug)]
struct Entry {
    definition: Arc<Definition>,
    source: Source,
}

type Table = HashMap<Box<str>, Entry>;

/// Every definition in force, by family name (counters without `_total`).
#[derive(Debug, Default)]
pub struct Definitions {
    /// Replaced whole on every change, so a reader clones one `Arc` and never waits on a writer.
    table: RwLock<Arc<Table>>,
    /// Counts changes, so that what an input worked out from the definitions can be kept until
    /// the next one ([`Definitions::generation`]).
    generation: AtomicU64,
}

impl Definitions {
    /// A number that grows with every change of the table, taken after the change is in place:
    /// anything worked out from the definitions read after a given generation is stale once it
    /// differs.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `table` in force and counts the change.
    fn put(&self, guard: &mut Arc<Table>, table: Table) {
        *guard = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The definition of family `name`, if any source declares one.
    pub fn get(&self, name: &str) -> Option<Arc<Definition>> {
        self.table
            .read()
            .get(name)
            .map(|entry| Arc::clone(&entry.definition))
    }

    /// The source of family `name`'s definition, if it has one.
    pub fn source(&self, name: &str) -> Option<Source> {
        self.table.read().get(name).map(|entry| entry.source)
    }

    /// Every definition with its name and source, sorted by name.
    pub fn list(&self) -> Vec<(String, Source, Arc<Definition>)> {
        let table = Arc::clone(&self.table.read());
        let mut out: Vec<_> = table
            .iter()
            .map(|(name, entry)| {
                (
                    name.to_string(),
                    entry.source,
                    Arc::clone(&entry.definition),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Puts `definitions` in force as the whole set of `source` (a config reload), dropping
    /// that source's definitions that are not in it. A name another source defines is refused
    /// before anything changes. Returns the names whose definition changed (added, altered or
    /// removed), whose families the caller must start afresh.
    pub fn replace_source(
        &self,
        source: Source,
        definitions: HashMap<Box<str>, Arc<Definition>>,
    ) -> Result<Vec<String>, DefinitionError> {
        let mut guard = self.table.write();
        let old = Arc::clone(&guard);
        if let Some((name, entry)) = definitions.keys().find_map(|name| {
            old.get(name)
                .filter(|e| e.source != source)
                .map(|e| (name, e))
        }) {
            return Err(DefinitionError::OwnedBy {
                name: name.to_string(),
                source: entry.source,
            });
        }
        let mut table: Table = old
            .iter()
            .filter(|(_, entry)| entry.source != source)
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        let mut changed: Vec<String> = old
            .iter()
            .filter(|(name, entry)| {
                entry.source == source && definitions.get(*name) != Some(&entry.definition)
            })
            .map(|(name, _)| name.to_string())
            .collect();
        for (name, definition) in definitions {
            if !old.contains_key(&name) {
                changed.push(name.to_string());
            }
            table.insert(name, Entry { definition, source });
        }
        self.put(&mut guard, table);
        changed.sort();
        Ok(changed)
    }

    /// Adds or replaces the definition of `name` for `source`. Returns the definition it
    /// replaced, if any (the caller starts the family afresh when it differs).
    pub fn insert(
        &self,
        source: Source,
        name: &str,
        definition: Definition,
    ) -> Result<Option<Arc<Definition>>, DefinitionError> {
        let mut guard = self.table.write();
        let previous = match guard.get(name) {
            Some(entry) if entry.source != source => {
                return Err(DefinitionError::OwnedBy {
                    name: name.to_owned(),
                    source: entry.source,
                });
            }
            Some(entry) => Some(Arc::clone(&entry.definition)),
            None => None,
        };
        let mut table = Table::clone(&guard);
        table.insert(
            name.into(),
            Entry {
                definition: Arc::new(definition),
                source,
            },
        );
        self.put(&mut guard, table);
        Ok(previous)
    }

    /// Removes the definition of `name`, which `source` must own.
    pub fn remove(&self, source: Source, name: &str) -> Result<Arc<Definition>, DefinitionError> {
        let mut guard = self.table.write();
        match guard.get(name) {
            None => Err(DefinitionError::NotFound {
                name: name.to_owned(),
            }),
            Some(entry) if entry.source != source => Err(DefinitionError::OwnedBy {
                name: name.to_owned(),
                source: entry.source,
            }),
            Some(_) => {
                let mut table = Table::clone(&guard);
                let entry = table.remove(name).expect("checked above");
                self.put(&mut guard, table);
                Ok(entry.definition)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A gauge definition told apart by its help (for tests here and in `record`).
    pub(crate) fn gauge(help: &str) -> Definition {
        Definition {
            kind: Kind::Gauge,
            labels: None,
            options: SeriesOptions {
                help: Some(help.into()),
                ..SeriesOptions::default()
            },
            aggregation: None,
        }
    }

    fn set_of(names: &[(&str, &str)]) -> HashMap<Box<str>, Arc<Definition>> {
        names
            .iter()
            .map(|(name, help)| ((*name).into(), Arc::new(gauge(help))))
            .collect()
    }

    #[test]
    fn replacing_a_source_reports_added_changed_and_removed_names_only() {
        let definitions = Definitions::default();
        let first = definitions
            .replace_source(Source::File, set_of(&[("a", "1"), ("b", "1"), ("c", "1")]))
            .unwrap();
        assert_eq!(first, ["a", "b", "c"]);
        let second = definitions
            .replace_source(Source::File, set_of(&[("a", "1"), ("b", "2"), ("d", "1")]))
            .unwrap();
        assert_eq!(second, ["b", "c", "d"]);
        assert!(definitions.get("c").is_none());
        assert_eq!(
            definitions.get("b").unwrap().options.help.as_deref(),
            Some("2")
        );
    }

    #[test]
    fn a_source_cannot_change_another_sources_definition() {
        let definitions = Definitions::default();
        definitions
            .replace_source(Source::File, set_of(&[("from_file", "f")]))
            .unwrap();
        let refused = definitions.insert(Source::Api, "from_file", gauge("api"));
        assert_eq!(
            refused.unwrap_err(),
            DefinitionError::OwnedBy {
                name: "from_file".into(),
                source: Source::File
            }
        );
        assert!(definitions.remove(Source::Api, "from_file").is_err());
        assert_eq!(
            definitions
                .get("from_file")
                .unwrap()
                .options
                .help
                .as_deref(),
            Some("f")
        );
    }

    #[test]
    fn a_reload_keeps_the_apis_definitions_and_cannot_take_their_names() {
        let definitions = Definitions::default();
        definitions
            .insert(Source::Api, "api_metric", gauge("api"))
            .unwrap();
        definitions
            .replace_source(Source::File, set_of(&[("file_metric", "f")]))
            .unwrap();
        assert_eq!(definitions.source("api_metric"), Some(Source::Api));
        let clash = definitions.replace_source(Source::File, set_of(&[("api_metric", "f")]));
        assert!(clash.is_err());
        assert_eq!(definitions.source("file_metric"), Some(Source::File));
    }

    #[test]
    fn one_definition_is_added_replaced_and_removed_at_a_time() {
        let definitions = Definitions::default();
        assert_eq!(
            definitions.insert(Source::Api, "m", gauge("1")).unwrap(),
            None
        );
        let previous = definitions.insert(Source::Api, "m", gauge("2")).unwrap();
        assert_eq!(previous.unwrap().options.help.as_deref(), Some("1"));
        assert_eq!(definitions.list().len(), 1);
        definitions.remove(Source::Api, "m").unwrap();
        assert!(definitions.get("m").is_none());
        assert_eq!(
            definitions.remove(Source::Api, "m").unwrap_err(),
            DefinitionError::NotFound { name: "m".into() }
        );
    }
}
