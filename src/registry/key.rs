//! A series' identity as it is assembled: [`SeriesKeyBuf`], the canonical key an input's labels
//! become (kind, family, sorted and escaped labels), the [`SeriesOptions`] a new series takes,
//! and the label-value escaping the key and the text formats share.

use std::sync::Arc;

use super::Kind;
use crate::summary::SummaryConfig;

/// A canonical series identity being assembled. One lives per ingest thread and is reused for
/// every line, so assembling a key allocates only while its buffers grow to their working size.
///
/// The key is `<kind letter><family>{<labels>` where `<labels>` is the exposition's own label
/// text, `name="value",...`, sorted by name and escaped. A family name never holds `{` and an
/// escaped value never holds a bare `"`, so keys are unambiguous; and since the label text is
/// part of the key, a series stores it once and a scrape copies it straight out.
#[derive(Debug, Default)]
pub struct SeriesKeyBuf {
    kind: Option<Kind>,
    text: String,
    family_len: usize,
    /// (name start, name end, value start, value end) into `text`.
    labels: Vec<[u32; 4]>,
    key: String,
    /// What a mapping rule says about the series, used only when it is created.
    pub options: SeriesOptions,
}

/// Settings a mapping rule (or, later, a metric definition) gives a new series and its family.
/// A family takes them from its first series; later series of the family share the family's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesOptions {
    /// Histogram bucket bounds instead of the registry default.
    pub buckets: Option<Arc<[f64]>>,
    /// The family's HELP text.
    pub help: Option<Arc<str>>,
    /// The family's UNIT (OpenMetrics); the family name ends with `_<unit>`.
    pub unit: Option<Arc<str>>,
    /// Idle time-to-live in seconds instead of the registry default (0 = never expire).
    pub ttl_secs: Option<u32>,
    /// Quantiles and window for summaries instead of the defaults.
    pub summary: Option<Arc<SummaryConfig>>,
    /// Native buckets for histograms, where they differ from the registry default.
    pub native: NativeOptions,
    /// The series takes whole values already aggregated by a client (pushes from batch jobs)
    /// rather than observations: its cell is made in that shape.
    pub preaggregated: Option<Preaggregated>,
}

/// A histogram family's native buckets as a rule or a definition asks for them; each setting
/// left `None` takes the registry's default (`[aggregation]`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NativeOptions {
    /// `native_histogram_bucket_factor`: above 1, native buckets at most that factor wider than
    /// the one before; 0, no native buckets.
    pub bucket_factor: Option<f64>,
    /// `native_histogram_max_buckets`: populated buckets before they widen.
    pub max_buckets: Option<u32>,
}

impl NativeOptions {
    /// Each setting of `self`, or else of `fallback`.
    pub fn or(self, fallback: NativeOptions) -> NativeOptions {
        NativeOptions {
            bucket_factor: self.bucket_factor.or(fallback.bucket_factor),
            max_buckets: self.max_buckets.or(fallback.max_buckets),
        }
    }
}

/// The shape of a series made for values a client aggregated itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Preaggregated {
    /// A histogram with these bucket bounds (finite, ascending, without `+Inf`), whatever its
    /// family's: a pushed histogram keeps the client's buckets.
    Histogram(Arc<[f64]>),
    /// A summary whose quantiles come with each write, with no sketch behind them.
    Summary,
}

impl SeriesKeyBuf {
    /// The kind of the identity being built, once [`SeriesKeyBuf::start`] was called.
    pub(super) fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// Changes the kind of the identity being built (before [`SeriesKeyBuf::finish`]), e.g.
    /// when a rule or a definition makes an observation a summary rather than a histogram.
    pub fn set_kind(&mut self, kind: Kind) {
        self.kind = Some(kind);
    }

    /// Starts a new identity; write the family name into the returned buffer.
    pub fn start(&mut self, kind: Kind) -> &mut String {
        self.kind = Some(kind);
        self.text.clear();
        self.labels.clear();
        self.key.clear();
        self.options = SeriesOptions::default();
        self.family_len = 0;
        &mut self.text
    }

    /// Ends the family name (everything written so far).
    pub fn end_family(&mut self) {
        self.family_len = self.text.len();
    }

    pub fn family(&self) -> &str {
        &self.text[..self.family_len]
    }

    /// Lets the caller rewrite the family name (e.g. strip a `_total`).
    pub fn truncate_family(&mut self, len: usize) {
        debug_assert!(self.labels.is_empty());
        self.text.truncate(len);
        self.family_len = len;
    }

    /// Adds a label: `write_name` appends the label name, `value` is taken verbatim.
    pub fn push_label(&mut self, write_name: impl FnOnce(&mut String), value: &str) {
        let name_start = self.text.len() as u32;
        write_name(&mut self.text);
        let name_end = self.text.len() as u32;
        self.text.push_str(value);
        let value_end = self.text.len() as u32;
        self.labels
            .push([name_start, name_end, name_end, value_end]);
    }

    fn slice(&self, start: u32, end: u32) -> &str {
        &self.text[start as usize..end as usize]
    }

    /// Keeps only the labels whose name `keep` accepts; returns how many were dropped.
    pub fn retain_labels(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let before = self.labels.len();
        let text = &self.text;
        self.labels
            .retain(|l| keep(&text[l[0] as usize..l[1] as usize]));
        before - self.labels.len()
    }

    /// Sorts the labels, keeps the last of duplicate names, and builds the key bytes.
    pub fn finish(&mut self) {
        let Self {
            text, labels, key, ..
        } = self;
        let name = |l: &[u32; 4]| &text[l[0] as usize..l[1] as usize];
        // Stable, so equal names stay in wire order and the last one is the one kept.
        labels.sort_by(|a, b| name(a).cmp(name(b)));
        labels.dedup_by(|later, earlier| {
            let same = name(later) == name(earlier);
            if same {
                *earlier = *later;
            }
            same
        });
        key.clear();
        key.push(self.kind.map_or('?', Kind::key_letter));
        let family = &text[..self.family_len];
        debug_assert!(
            !family.contains('{'),
            "a family name is a sanitised metric name"
        );
        key.push_str(family);
        key.push('{');
        for (i, l) in labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&text[l[0] as usize..l[1] as usize]);
            key.push_str("=\"");
            escape_label_value(&text[l[2] as usize..l[3] as usize], key);
            key.push('"');
        }
    }

    /// The canonical key; valid after [`SeriesKeyBuf::finish`].
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The `(name, value)` pairs, sorted; valid after [`SeriesKeyBuf::finish`].
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels
            .iter()
            .map(|l| (self.slice(l[0], l[1]), self.slice(l[2], l[3])))
    }
}

/// Appends `value` escaped for a quoted label value in the text formats: `\`, `"` and newline.
pub fn escape_label_value(value: &str, out: &mut String) {
    // Runs between the bytes that need escaping are copied whole (a char at a time cost the
    // key building of an API input's series a fifth more). Those bytes are ASCII, so every cut
    // falls between chars.
    let mut run = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            b'\n' => "\\n",
            _ => continue,
        };
        out.push_str(&value[run..at]);
        out.push_str(escaped);
        run = at + 1;
    }
    out.push_str(&value[run..]);
}

#[cfg(test)]
mod tests {
    use super::escape_label_value;

    #[test]
    fn label_values_escape_backslash_quote_and_newline_only() {
        for (value, escaped) in [
            ("", ""),
            ("plain", "plain"),
            (r"C:\path", r"C:\\path"),
            (r#"say "hi""#, r#"say \"hi\""#),
            ("two\nlines", r"two\nlines"),
            ("\n\"\\", r#"\n\"\\"#),
            ("tab\tand é ✓ \r kept", "tab\tand é ✓ \r kept"),
            (r#"é\"#, r#"é\\"#),
        ] {
            let mut out = String::from("k=");
            escape_label_value(value, &mut out);
            assert_eq!(out, format!("k={escaped}"), "{value:?}");
        }
    }
}
