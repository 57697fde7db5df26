//! Regexes: statsd_exporter's are RE2 (Go), tallyd's are the `regex` crate's. `\d`, `\w`, `\s`,
//! `\b` are ASCII-only in RE2, Unicode-aware in tallyd, so they are spelled out (`[0-9]`,
//! `[0-9A-Za-z_]`…); `\Q…\E` is escaped.

use std::fmt::Write as _;

/// RE2 (Go) regex syntax to the `regex` crate's: Perl classes are ASCII-only in RE2 and
/// Unicode-aware in the crate, so they are spelled out; `\Q…\E` is escaped; `[` and `&&`/`~~`
/// inside a class (literal in RE2, nesting and set operators in the crate) are escaped.
/// Returns the pattern and whether anything changed.
pub(super) fn re2_to_rust(pattern: &str) -> (String, bool) {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    let mut changed = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(escaped) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let replacement = match escaped {
                    'd' => Some("[0-9]"),
                    'D' => Some("[^0-9]"),
                    'w' => Some("[0-9A-Za-z_]"),
                    'W' => Some("[^0-9A-Za-z_]"),
                    's' => Some(r"[\t\n\f\r ]"),
                    'S' => Some(r"[^\t\n\f\r ]"),
                    'b' if !in_class => Some(r"(?-u:\b)"),
                    'B' if !in_class => Some(r"(?-u:\B)"),
                    _ => None,
                };
                if let Some(replacement) = replacement {
                    out.push_str(replacement);
                    changed = true;
                } else if escaped == 'Q' && !in_class {
                    let mut literal = String::new();
                    while let Some(c) = chars.next() {
                        if c == '\\' && chars.peek() == Some(&'E') {
                            chars.next();
                            break;
                        }
                        literal.push(c);
                    }
                    out.push_str(&regex::escape(&literal));
                    changed = true;
                } else {
                    out.push('\\');
                    out.push(escaped);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().unwrap_or('^'));
                }
                // A `]` first in a class is a literal in both syntaxes.
                if chars.peek() == Some(&']') {
                    chars.next();
                    out.push_str(r"\]");
                }
            }
            '[' if in_class => {
                if chars.peek() == Some(&':') {
                    // A POSIX class, [:alpha:]: the same in both.
                    out.push('[');
                    for c in chars.by_ref() {
                        out.push(c);
                        if c == ']' {
                            break;
                        }
                    }
                } else {
                    out.push_str(r"\[");
                    changed = true;
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class && chars.peek() == Some(&c) => {
                chars.next();
                let _ = write!(out, r"\{c}\{c}");
                changed = true;
            }
            _ => out.push(c),
        }
    }
    (out, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_perl_classes_become_ascii() {
        assert_eq!(re2_to_rust(r"(\w+)\.\d").0, r"([0-9A-Za-z_]+)\.[0-9]");
        assert_eq!(re2_to_rust(r"[\w.-]").0, r"[[0-9A-Za-z_].-]");
        assert_eq!(re2_to_rust(r"\bx\\w").0, r"(?-u:\b)x\\w");
        assert_eq!(re2_to_rust(r"\Qa.b\E+").0, r"a\.b+");
        assert_eq!(re2_to_rust(r"[]a[&&]").0, r"[\]a\[\&\&]");
        assert_eq!(re2_to_rust(r"[[:alpha:]]x").0, r"[[:alpha:]]x");
        assert!(!re2_to_rust(r"(.*)\.(.*)").1);
    }
}
