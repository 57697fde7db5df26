//! statsd_exporter's name and label templates, converted to tallyd's syntax so that they expand
//! to what statsd_exporter substituted.
//!
//! `$1_x` is `${1_x}` in statsd_exporter: a group that does not exist, so empty. References
//! are converted to what statsd_exporter substituted: `${1}` for a capture, nothing for a
//! missing group (warned), `$$` for a literal `$`. In a glob, `$0` is empty too. A name that is
//! always empty becomes `action = "drop"` (statsd_exporter drops those samples; see `convert`).

use std::fmt::Write as _;

pub(super) enum SourceGroups {
    Glob(usize),
    Regex {
        count: usize,
        names: Vec<(String, usize)>,
    },
}

/// Converts a statsd_exporter template into tallyd's syntax, reproducing what statsd_exporter
/// substitutes. `changes` gets a line per reference that statsd_exporter replaced by nothing.
pub(super) fn convert_template(
    text: &str,
    groups: &SourceGroups,
    in_name: bool,
    changes: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    match groups {
        SourceGroups::Glob(stars) => convert_glob_template(text, *stars, &mut out, changes),
        SourceGroups::Regex { count, names } => {
            convert_regex_template(text, *count, names, in_name, &mut out, changes)
        }
    }
    out
}

fn push_literal(out: &mut String, text: &str) {
    for c in text.chars() {
        if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
}

/// statsd_exporter's glob formatter: each match of `\$\{?([a-zA-Z0-9_$]+)\}?` whose run is a
/// number from 1 to the number of `*` is that capture; any other match becomes nothing.
fn convert_glob_template(text: &str, stars: usize, out: &mut String, changes: &mut Vec<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        if bytes.get(j) == Some(&b'{') {
            j += 1;
        }
        let run_start = j;
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'$')
        {
            j += 1;
        }
        if j == run_start {
            i += 1;
            continue;
        }
        let run = &text[run_start..j];
        if bytes.get(j) == Some(&b'}') {
            j += 1;
        }
        push_literal(out, &text[literal_start..i]);
        let whole = &text[i..j];
        match run.parse::<usize>() {
            Ok(n) if (1..=stars).contains(&n) && run.bytes().all(|b| b.is_ascii_digit()) => {
                let _ = write!(out, "${{{n}}}");
            }
            Ok(0) => changes.push(format!(
                "`{whole}` is empty in a statsd_exporter glob rule ($0 is not the whole name \
                 there); left out"
            )),
            Ok(_) => changes.push(format!(
                "`{whole}` refers to a `*` the glob does not have ({stars}); statsd_exporter \
                 substitutes nothing; left out"
            )),
            Err(_) => changes.push(format!(
                "statsd_exporter reads `{whole}` as a reference to the group named `{run}`, \
                 which does not exist, and substitutes nothing; left out (write `${{1}}_x` \
                 to follow a capture with `_x`)"
            )),
        }
        i = j;
        literal_start = j;
    }
    push_literal(out, &text[literal_start..]);
}

/// Go's `Regexp.Expand`: `$$` is `$`; `$name`/`${name}` with the longest run of letters,
/// digits and `_`; a number (without a leading zero) is a group, anything else a named group;
/// a group that does not exist is empty; a `$` that starts nothing is kept.
fn convert_regex_template(
    text: &str,
    count: usize,
    names: &[(String, usize)],
    in_name: bool,
    out: &mut String,
    changes: &mut Vec<String>,
) {
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        push_literal(out, &rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
            continue;
        }
        let (braced, body) = match after.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, after),
        };
        let run_len = body
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(body.len(), |(i, _)| i);
        let closed = !braced || body[run_len..].starts_with('}');
        if run_len == 0 || !closed {
            out.push_str("$$");
            rest = after;
            continue;
        }
        let reference = &body[..run_len];
        let consumed = 1 + usize::from(braced) + run_len + usize::from(braced);
        let whole = &rest[dollar..dollar + consumed];
        rest = &rest[dollar + consumed..];
        let number = (reference.bytes().all(|b| b.is_ascii_digit())
            && !(reference.len() > 1 && reference.starts_with('0')))
        .then(|| reference.parse::<usize>().ok())
        .flatten();
        match number {
            Some(n) if n <= count => {
                let _ = write!(out, "${{{n}}}");
            }
            Some(_) => changes.push(format!(
                "`{whole}` refers to a group the regex does not have ({count}); statsd_exporter \
                 substitutes nothing; left out"
            )),
            None => match names.iter().find(|(name, _)| name == reference) {
                // tallyd takes named groups in label values only: by number in a name.
                Some((_, index)) if in_name => {
                    let _ = write!(out, "${{{index}}}");
                }
                Some(_) => {
                    let _ = write!(out, "${{{reference}}}");
                }
                None => changes.push(format!(
                    "statsd_exporter reads `{whole}` as a reference to the group named \
                     `{reference}`, which the regex does not have, and substitutes nothing; \
                     left out{}",
                    if reference.starts_with(|c: char| c.is_ascii_digit()) {
                        " (write `${1}_x` to follow a group with `_x`)"
                    } else {
                        ""
                    }
                )),
            },
        }
    }
    push_literal(out, rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(text: &str, stars: usize) -> (String, usize) {
        let mut changes = Vec::new();
        let out = convert_template(text, &SourceGroups::Glob(stars), true, &mut changes);
        (out, changes.len())
    }

    #[test]
    fn glob_templates_follow_statsd_exporters_formatter() {
        assert_eq!(glob("${1}_server", 1), ("${1}_server".into(), 0));
        assert_eq!(glob("$1_server", 1), ("".into(), 1));
        assert_eq!(glob("$2-$1", 2), ("${2}-${1}".into(), 0));
        assert_eq!(glob("a$0-b", 1), ("a-b".into(), 1));
        assert_eq!(glob("a$0b", 1), ("a".into(), 1));
        assert_eq!(glob("x$3", 2), ("x".into(), 1));
        assert_eq!(glob("cost$", 0), ("cost$$".into(), 0));
        assert_eq!(glob("$1}", 1), ("${1}".into(), 0));
    }

    fn regex_t(text: &str, in_name: bool) -> (String, usize) {
        let mut changes = Vec::new();
        let groups = SourceGroups::Regex {
            count: 2,
            names: vec![("svc".into(), 2)],
        };
        let out = convert_template(text, &groups, in_name, &mut changes);
        (out, changes.len())
    }

    #[test]
    fn regex_templates_follow_gos_expand() {
        assert_eq!(regex_t("${1}_x", false), ("${1}_x".into(), 0));
        assert_eq!(regex_t("$1_x", false), ("".into(), 1));
        assert_eq!(regex_t("$0/$svc", false), ("${0}/${svc}".into(), 0));
        assert_eq!(regex_t("$svc", true), ("${2}".into(), 0));
        assert_eq!(regex_t("$$1 $ ${x", false), ("$$1 $$ $${x".into(), 0));
        assert_eq!(regex_t("$01", false), ("".into(), 1));
        assert_eq!(regex_t("$7", false), ("".into(), 1));
    }
}
