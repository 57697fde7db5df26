//! Which series a `[[remote_write]]` endpoint receives: every one by default, or those whose
//! family name matches one of `match` (patterns where `*` stands for any run of characters)
//! and whose labels carry every pair of `match_labels`. Names are tested once per family and
//! labels once per series, during the snapshot.

use std::collections::BTreeMap;

/// A compiled selector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    /// Family-name patterns; empty selects every family.
    names: Vec<String>,
    /// Label pairs a series must carry, exactly.
    labels: Vec<(String, String)>,
}

impl Selector {
    /// Checks the patterns: a family name is `[A-Za-z0-9_:]`, so a pattern holding anything
    /// else but `*` can match nothing and is surely a mistake.
    pub fn new(names: &[String], labels: &BTreeMap<String, String>) -> Result<Selector, String> {
        for pattern in names {
            if pattern.is_empty() {
                return Err("match: an empty pattern matches no family".into());
            }
            if let Some(c) = pattern
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*')))
            {
                return Err(format!(
                    "match: pattern {pattern:?} holds {c:?}; metric names are made of \
                     [A-Za-z0-9_:], and * stands for any run of them"
                ));
            }
        }
        Ok(Selector {
            names: names.to_vec(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// True when series of the family `name` may be selected (counters by their name without
    /// `_total`, as `# TYPE` lines name them).
    pub fn family(&self, name: &str) -> bool {
        self.names.is_empty()
            || self
                .names
                .iter()
                .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }

    /// True when a series with these `(name, value)` pairs is selected.
    pub fn series(&self, pairs: &[(String, String)]) -> bool {
        self.labels
            .iter()
            .all(|wanted| pairs.iter().any(|pair| pair == wanted))
    }
}

/// `*`-only glob match, iterative with one backtrack point (linear for these short patterns).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(names: &[&str], labels: &[(&str, &str)]) -> Selector {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Selector::new(&names, &labels).unwrap()
    }

    #[test]
    fn no_pattern_selects_every_family() {
        assert!(selector(&[], &[]).family("anything"));
    }

    #[test]
    fn star_matches_any_run_including_none() {
        let s = selector(&["model_*_seconds", "up"], &[]);
        assert!(s.family("model_latency_seconds"));
        assert!(s.family("model__seconds"));
        assert!(s.family("model_a_b_seconds"));
        assert!(s.family("up"));
        assert!(!s.family("upper"));
        assert!(!s.family("model_latency_seconds_x"));
        assert!(selector(&["*"], &[]).family("x"));
        assert!(selector(&["a*b*c"], &[]).family("aXbYbZc"));
        assert!(!selector(&["a*b*c"], &[]).family("aXcYb"));
    }

    #[test]
    fn every_label_pair_must_be_present() {
        let s = selector(&[], &[("env", "prod"), ("team", "ml")]);
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(s.series(&pairs(&[("env", "prod"), ("team", "ml"), ("x", "y")])));
        assert!(!s.series(&pairs(&[("env", "prod")])));
        assert!(!s.series(&pairs(&[("env", "dev"), ("team", "ml")])));
        assert!(selector(&[], &[]).series(&[]));
    }

    #[test]
    fn patterns_that_can_match_no_name_are_refused() {
        let labels = BTreeMap::new();
        assert!(
            Selector::new(&["a.b".into()], &labels)
                .unwrap_err()
                .contains("'.'")
        );
        assert!(Selector::new(&[String::new()], &labels).is_err());
    }
}
