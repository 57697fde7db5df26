//! The `$1` / `${1}` / `${name}` / `$0` templates of a rule's `name` and `labels`, parsed once
//! at load into literal text and group references, so a lookup only concatenates.
//!
//! Grammar (checked at load; every mistake is an error naming the template):
//!
//! - `$$` is a literal `$`;
//! - `${ref}` and `$ref` are references, where `ref` is a run of `[A-Za-z0-9_]` (the unbraced
//!   form takes the longest run, as in Go and the `regex` crate: `$1_x` means `${1_x}`);
//! - a `ref` of digits is a group number: `0` is the whole StatsD name (the whole regex match),
//!   `1..` the `*`s of a glob from left to right, or the groups of a regex; any other `ref` is
//!   a named regex group, allowed in label values only;
//! - a reference to a group that does not exist is an error (statsd_exporter silently
//!   substituted an empty string), and so is a `$` that starts nothing.

use std::fmt;

/// The groups a template may refer to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Groups<'a> {
    /// Numbered groups besides `0`: the `*`s of a glob, or the groups of a regex.
    pub count: usize,
    /// Named regex groups and their numbers.
    pub names: &'a [(String, usize)],
    /// `true` for a glob rule (for error wording only).
    pub glob: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Group(usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Box<[Part]>,
}

/// What a template refers to: group `0` (the whole name) and the numbered groups.
pub(crate) trait Captured {
    /// The text of group `index`; empty for an optional regex group that did not take part.
    fn group(&self, index: usize) -> &str;
}

/// Where a template may appear, for the named-group rule and error wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Name,
    Label,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Name => f.write_str("name"),
            Place::Label => f.write_str("label value"),
        }
    }
}

fn is_ref_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Template {
    pub(crate) fn parse(text: &str, groups: Groups<'_>, place: Place) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            literal.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
                continue;
            }
            let (reference, tail) = if let Some(inner) = after.strip_prefix('{') {
                let Some(close) = inner.find('}') else {
                    return Err(format!(
                        "{place} {text:?}: `${{` has no closing `}}` (write `$$` for a literal `$`)"
                    ));
                };
                let reference = &inner[..close];
                if reference.is_empty() || !reference.bytes().all(is_ref_byte) {
                    return Err(format!(
                        "{place} {text:?}: `${{{reference}}}` is not a group reference \
                         (a group number or name: letters, digits, `_`)"
                    ));
                }
                (reference, &inner[close + 1..])
            } else {
                let len = after.bytes().take_while(|b| is_ref_byte(*b)).count();
                if len == 0 {
                    return Err(format!(
                        "{place} {text:?}: a `$` must start a group reference ($1, ${{1}}, \
                         ${{name}}) or be doubled ($$) for a literal `$`"
                    ));
                }
                (&after[..len], &after[len..])
            };
            let index = resolve(reference, groups, place, text)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal).into()));
            }
            parts.push(Part::Group(index));
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        Ok(Template {
            parts: parts.into(),
        })
    }

    /// The text, when the template refers to no group.
    pub(crate) fn as_static(&self) -> Option<&str> {
        match &*self.parts {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// Appends the expansion to `out`.
    pub(crate) fn expand_into(&self, captured: &impl Captured, out: &mut String) {
        for part in &*self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Group(index) => out.push_str(captured.group(*index)),
            }
        }
    }

    pub(crate) fn expand(&self, captured: &impl Captured) -> String {
        let mut out = String::new();
        self.expand_into(captured, &mut out);
        out
    }
}

fn resolve(reference: &str, groups: Groups<'_>, place: Place, text: &str) -> Result<usize, String> {
    if reference.bytes().all(|b| b.is_ascii_digit()) {
        let index: usize = reference.parse().unwrap_or(usize::MAX);
        if index <= groups.count {
            return Ok(index);
        }
        let what = if groups.glob {
            format!("the glob has {} `*`", groups.count)
        } else {
            format!("the regex has {} group(s)", groups.count)
        };
        return Err(format!(
            "{place} {text:?}: ${{{reference}}} refers to a group that does not exist ({what}; \
             $0 is the whole name)"
        ));
    }
    let digits = reference.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 {
        let (number, tail) = reference.split_at(digits);
        return Err(format!(
            "{place} {text:?}: `${reference}` refers to a group named `{reference}`, which \
             cannot exist; to follow group {number} with `{tail}`, write `${{{number}}}{tail}`"
        ));
    }
    if groups.glob {
        return Err(format!(
            "{place} {text:?}: `${reference}` names a group, but a glob has only numbered \
             groups ($1 for the first `*`)"
        ));
    }
    if place == Place::Name {
        return Err(format!(
            "{place} {text:?}: named groups (`${reference}`) may be used in label values only; \
             refer to the group by its number in the name"
        ));
    }
    groups
        .names
        .iter()
        .find(|(name, _)| name == reference)
        .map(|(_, index)| *index)
        .ok_or_else(|| format!("{place} {text:?}: the regex has no group named `{reference}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<&'static str>);

    impl Captured for Fixed {
        fn group(&self, index: usize) -> &str {
            self.0[index]
        }
    }

    const GLOB2: Groups<'static> = Groups {
        count: 2,
        names: &[],
        glob: true,
    };

    fn expand(text: &str) -> Result<String, String> {
        let template = Template::parse(text, GLOB2, Place::Label)?;
        Ok(template.expand(&Fixed(vec!["a.b", "a", "b"])))
    }

    #[test]
    fn references_in_all_spellings() {
        assert_eq!(expand("$1-${2}_x:$0").unwrap(), "a-b_x:a.b");
    }

    #[test]
    fn a_doubled_dollar_is_literal() {
        assert_eq!(expand("$$1").unwrap(), "$1");
        assert_eq!(
            Template::parse("$$", GLOB2, Place::Name)
                .unwrap()
                .as_static(),
            Some("$")
        );
    }

    #[test]
    fn an_unbraced_reference_takes_the_longest_run() {
        let err = expand("$1_x").unwrap_err();
        assert!(err.contains("write `${1}_x`"), "{err}");
    }

    #[test]
    fn missing_groups_and_stray_dollars_are_errors() {
        assert!(expand("$3").unwrap_err().contains("does not exist"));
        assert!(expand("cost $").unwrap_err().contains("doubled"));
        assert!(expand("${1").unwrap_err().contains("closing"));
        assert!(expand("${a-b}").is_err());
        assert!(expand("$name").unwrap_err().contains("glob"));
    }
}
