//! Prometheus naming: turning a StatsD name and its tags into a metric name and label names.
//!
//! The rules are statsd_exporter's, so dashboards survive a migration: every character (not
//! byte) outside `[A-Za-z0-9_]` becomes one `_`, except that a run of `-` becomes a single `_`;
//! a leading digit gets a `_` prefix. Label names are sanitised the same way, and the names
//! Prometheus reserves (`le`, `quantile`, anything starting `__`) are renamed `exported_<name>`.
//!
//! The functions write into a caller's buffer so the ingest path can reuse one allocation.

/// Appends the sanitised form of `name` to `out`.
pub fn sanitize_name_into(name: &str, out: &mut String) {
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.push('_');
    }
    // The usual name is ASCII with a few separators: copy the clean runs whole instead of
    // decoding and re-encoding every character (a cache miss on the ingest path pays this).
    let mut rest = name;
    while let Some(at) = rest
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
    {
        if !rest.as_bytes()[at].is_ascii() {
            break;
        }
        out.push_str(&rest[..at]);
        out.push('_');
        // A run of `-` is one `_`.
        let dashes = if rest.as_bytes()[at] == b'-' {
            rest.as_bytes()[at..]
                .iter()
                .take_while(|&&b| b == b'-')
                .count()
        } else {
            1
        };
        rest = &rest[at + dashes..];
    }
    if rest.is_ascii() {
        out.push_str(rest);
        return;
    }
    sanitize_chars_into(rest, out);
}

/// [`sanitize_name_into`] a character at a time, for names with non-ASCII characters.
fn sanitize_chars_into(name: &str, out: &mut String) {
    let mut previous_was_dash = false;
    for c in name.chars() {
        let dash = c == '-';
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !(dash && previous_was_dash) {
            out.push('_');
        }
        previous_was_dash = dash;
    }
}

/// The family name of a counter called `name`: without its trailing `_total`s, since every
/// format appends one to a counter's samples. `x`, `x_total` and `x_total_total` are one
/// counter; stripping only one would leave a family `x_total` whose OpenMetrics descriptor
/// (the name without `_total`) collides with a family `x`. A name that is nothing but
/// `_total` keeps it, so the family name is never empty.
pub fn counter_family(name: &str) -> &str {
    let mut family = name;
    while let Some(base) = family.strip_suffix("_total") {
        if base.is_empty() {
            break;
        }
        family = base;
    }
    family
}

/// The sanitised form of `name` as a new string (for config and tests; the hot path uses
/// [`sanitize_name_into`]).
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    sanitize_name_into(name, &mut out);
    out
}

/// Appends the label name for tag key `key` to `out`: sanitised, and renamed when reserved.
pub fn label_name_into(key: &str, out: &mut String) {
    let start = out.len();
    sanitize_name_into(key, out);
    let sanitised = &out[start..];
    if sanitised == "le" || sanitised == "quantile" || sanitised.starts_with("__") {
        out.insert_str(start, "exported_");
    }
}

/// True when `name` needs no sanitising (the common case; lets callers skip a copy).
pub fn is_clean_name(name: &str) -> bool {
    is_name(name, &CLEAN_NAME_BYTES)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`: a metric name both text formats (and Prometheus) accept. The
/// write seam checks every new series' family with it, so it is a table lookup per byte.
pub fn is_metric_name(name: &str) -> bool {
    is_name(name, &METRIC_NAME_BYTES)
}

fn is_name(name: &str, table: &[bool; 256]) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty() && !bytes[0].is_ascii_digit() && bytes.iter().all(|&b| table[usize::from(b)])
}

/// Bytes of a sanitised name: `[A-Za-z0-9_]`.
static CLEAN_NAME_BYTES: [bool; 256] = name_bytes(false);
/// Bytes of a metric name: `[A-Za-z0-9_:]` (recording rules use `:`).
static METRIC_NAME_BYTES: [bool; 256] = name_bytes(true);

const fn name_bytes(colon: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || (colon && c == b':');
        b += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(key: &str) -> String {
        let mut out = String::new();
        label_name_into(key, &mut out);
        out
    }

    proptest::proptest! {
        /// The run-copying fast path agrees with the character loop on any text.
        #[test]
        fn the_fast_path_agrees_with_the_character_loop(name in "[a-z0_.:é-]{0,24}|\\PC{0,12}") {
            let mut fast = String::new();
            sanitize_name_into(&name, &mut fast);
            let mut slow = String::new();
            if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                slow.push('_');
            }
            sanitize_chars_into(&name, &mut slow);
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn a_counter_family_drops_every_trailing_total_but_never_becomes_empty() {
        assert_eq!(counter_family("jobs"), "jobs");
        assert_eq!(counter_family("jobs_total"), "jobs");
        assert_eq!(counter_family("jobs_total_total"), "jobs");
        assert_eq!(counter_family("_total"), "_total");
        assert_eq!(counter_family("_total_total"), "_total");
        assert_eq!(counter_family("totals_total"), "totals");
    }

    #[test]
    fn dots_and_colons_become_underscores() {
        assert_eq!(sanitize_name("a.b:c"), "a_b_c");
    }

    #[test]
    fn a_run_of_dashes_becomes_one_underscore() {
        assert_eq!(sanitize_name("fraud--v2-x"), "fraud_v2_x");
    }

    #[test]
    fn other_runs_are_not_collapsed() {
        assert_eq!(sanitize_name("a..b"), "a__b");
    }

    #[test]
    fn a_multibyte_character_becomes_one_underscore() {
        assert_eq!(sanitize_name("café.latency"), "caf__latency");
    }

    #[test]
    fn a_leading_digit_gets_an_underscore_prefix() {
        assert_eq!(sanitize_name("9lives"), "_9lives");
    }

    #[test]
    fn reserved_label_names_are_renamed() {
        assert_eq!(label("le"), "exported_le");
        assert_eq!(label("quantile"), "exported_quantile");
        assert_eq!(label("__name__"), "exported___name__");
        assert_eq!(label("model"), "model");
        assert_eq!(label("model.version"), "model_version");
    }

    #[test]
    fn metric_names_may_hold_colons_but_not_start_with_a_digit() {
        for good in ["a", "_x", ":rule:x", "job:requests:rate5m", "A_9"] {
            assert!(is_metric_name(good), "{good}");
        }
        for bad in ["", "9x", "a.b", "a-b", "é", "a b", "a\n"] {
            assert!(!is_metric_name(bad), "{bad:?}");
        }
        assert!(!is_clean_name("a:b"));
    }

    #[test]
    fn clean_names_are_recognised() {
        assert!(is_clean_name("requests_total"));
        assert!(!is_clean_name("requests.total"));
        assert!(!is_clean_name("1x"));
        assert!(!is_clean_name(""));
    }
}
