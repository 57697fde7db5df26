//! Glob patterns and the segment trie that matches a name against all glob rules at once.
//!
//! A pattern is split on `.` into segments. A segment is a literal, a lone `*` (any one
//! segment, possibly empty: `a.*.b` matches `a..b`, as in statsd_exporter), or a segment glob
//! such as `request_*` or `*_seconds`, where each `*` matches a run of characters other than
//! `.` (possibly empty). Every `*` is a capture, numbered from 1 left to right. When one segment
//! holds several `*`, the earlier ones take as little as they can.
//!
//! The trie has one node per distinct pattern prefix: literal segments are children in a hash
//! map, a lone `*` is one child, segment globs are a short list. A lookup walks the name's
//! segments depth first and keeps the lowest rule index found (first match in file order
//! wins). It prunes a branch when the lowest rule index below it cannot beat the best so far,
//! or when no pattern below it has the name's number of segments, so a lookup touches a few
//! nodes per segment whatever the number of rules; the depth of the walk is bounded by the
//! longest pattern, never by the name.

use std::collections::HashMap;

/// Most `*` one pattern may hold: captures live in a fixed array on the stack during a lookup
/// (and are copied when a better match is found), so the bound keeps that cheap.
pub(crate) const MAX_CAPTURES: usize = 16;

const NONE: u32 = u32::MAX;

/// A segment glob such as `request_*_total`: literal parts with a `*` between each two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentGlob {
    source: Box<str>,
    /// `stars + 1` parts; the first and last may be empty.
    parts: Box<[Box<str>]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    Star,
    Glob(SegmentGlob),
}

/// A parsed glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GlobPattern {
    pub segments: Vec<Segment>,
    pub stars: usize,
}

impl GlobPattern {
    pub(crate) fn parse(pattern: &str) -> Result<GlobPattern, String> {
        if pattern.is_empty() {
            return Err("the pattern is empty".into());
        }
        let mut segments = Vec::new();
        let mut stars = 0;
        for segment in pattern.split('.') {
            if segment == "*" {
                stars += 1;
                segments.push(Segment::Star);
            } else if !segment.contains('*') {
                segments.push(Segment::Literal(segment.into()));
            } else if segment.contains("**") {
                return Err(format!(
                    "glob {pattern:?}: `**` is not supported (a `*` never crosses a `.`, and two \
                     in a row match nothing more than one)"
                ));
            } else {
                let parts: Box<[Box<str>]> = segment.split('*').map(Box::from).collect();
                stars += parts.len() - 1;
                segments.push(Segment::Glob(SegmentGlob {
                    source: segment.into(),
                    parts,
                }));
            }
        }
        if stars > MAX_CAPTURES {
            return Err(format!(
                "glob {pattern:?} has {stars} `*`; at most {MAX_CAPTURES} are supported"
            ));
        }
        Ok(GlobPattern { segments, stars })
    }
}

/// Capture spans (byte offsets into the name) gathered during a lookup.
#[derive(Clone, Copy)]
pub(crate) struct Captures {
    spans: [(u32, u32); MAX_CAPTURES],
    len: usize,
}

impl Captures {
    const EMPTY: Captures = Captures {
        spans: [(0, 0); MAX_CAPTURES],
        len: 0,
    };

    fn push(&mut self, start: usize, end: usize) {
        // Patterns are limited to MAX_CAPTURES stars, and only one pattern's stars are on the
        // stack at a time.
        self.spans[self.len] = (start as u32, end as u32);
        self.len += 1;
    }

    /// The text of capture `index` (1-based) within `name`.
    pub(crate) fn get<'n>(&self, name: &'n str, index: usize) -> &'n str {
        let (start, end) = self.spans[index - 1];
        &name[start as usize..end as usize]
    }
}

impl SegmentGlob {
    /// Matches `segment` (which starts at byte `base` of the name), pushing one span per `*`.
    fn matches(&self, segment: &str, base: usize, captures: &mut Captures) -> bool {
        let parts = &self.parts;
        let first = &parts[0];
        let last = &parts[parts.len() - 1];
        if segment.len() < first.len() + last.len()
            || !segment.starts_with(&**first)
            || !segment.ends_with(&**last)
        {
            return false;
        }
        let end = segment.len() - last.len();
        let mark = captures.len;
        let mut pos = first.len();
        // Each middle part at its leftmost place: never loses a match for `*`-only globs, and
        // gives the earlier `*` the shortest text.
        for middle in &parts[1..parts.len() - 1] {
            match segment[pos..end].find(&**middle) {
                Some(at) => {
                    captures.push(base + pos, base + pos + at);
                    pos += at + middle.len();
                }
                None => {
                    captures.len = mark;
                    return false;
                }
            }
        }
        captures.push(base + pos, base + end);
        true
    }
}

#[derive(Debug)]
struct Node {
    literal: HashMap<Box<str>, u32, ahash::RandomState>,
    star: u32,
    globs: Vec<(SegmentGlob, u32)>,
    /// The first rule (in file order) whose pattern ends here.
    end: u32,
    /// The lowest rule index of any pattern through this node.
    min_rule: u32,
    /// Fewest and most segments still to match, over the patterns through this node.
    min_depth: u32,
    max_depth: u32,
}

impl Node {
    fn new() -> Node {
        Node {
            literal: HashMap::default(),
            star: NONE,
            globs: Vec::new(),
            end: NONE,
            min_rule: NONE,
            min_depth: u32::MAX,
            max_depth: 0,
        }
    }
}

/// All glob rules of one metric class.
#[derive(Debug)]
pub(crate) struct GlobTrie {
    nodes: Vec<Node>,
}

/// The result of a trie lookup.
pub(crate) struct Found {
    pub rule: u32,
    pub captures: Captures,
}

impl GlobTrie {
    pub(crate) fn new() -> GlobTrie {
        GlobTrie {
            nodes: vec![Node::new()],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes[0].min_rule == NONE
    }

    /// Adds rule `rule`; rules must be added in file order.
    pub(crate) fn insert(&mut self, rule: u32, pattern: &GlobPattern) {
        let total = pattern.segments.len() as u32;
        let mut node = 0usize;
        self.touch(node, rule, total);
        for (i, segment) in pattern.segments.iter().enumerate() {
            let existing = match segment {
                Segment::Literal(text) => self.nodes[node].literal.get(text).copied(),
                Segment::Star => Some(self.nodes[node].star).filter(|n| *n != NONE),
                Segment::Glob(glob) => self.nodes[node]
                    .globs
                    .iter()
                    .find(|(g, _)| g.source == glob.source)
                    .map(|(_, n)| *n),
            };
            let child = match existing {
                Some(child) => child as usize,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::new());
                    let id = child as u32;
                    let parent = &mut self.nodes[node];
                    match segment {
                        Segment::Literal(text) => {
                            parent.literal.insert(text.clone(), id);
                        }
                        Segment::Star => parent.star = id,
                        Segment::Glob(glob) => parent.globs.push((glob.clone(), id)),
                    }
                    child
                }
            };
            node = child;
            self.touch(node, rule, total - i as u32 - 1);
        }
        let end = &mut self.nodes[node].end;
        if *end == NONE {
            *end = rule;
        }
    }

    fn touch(&mut self, node: usize, rule: u32, remaining: u32) {
        let node = &mut self.nodes[node];
        node.min_rule = node.min_rule.min(rule);
        node.min_depth = node.min_depth.min(remaining);
        node.max_depth = node.max_depth.max(remaining);
    }

    /// The first rule below `bound` whose pattern matches `name`, with its captures.
    pub(crate) fn find(&self, name: &str, bound: u32) -> Option<Found> {
        if self.is_empty() {
            return None;
        }
        let segments = memchr::memchr_iter(b'.', name.as_bytes()).count() as u32 + 1;
        let mut best = Found {
            rule: bound,
            captures: Captures::EMPTY,
        };
        let mut captures = Captures::EMPTY;
        self.search(0, name, 0, segments, &mut captures, &mut best);
        (best.rule < bound).then_some(best)
    }

    fn search(
        &self,
        node: usize,
        name: &str,
        pos: usize,
        remaining: u32,
        captures: &mut Captures,
        best: &mut Found,
    ) {
        let n = &self.nodes[node];
        if n.min_rule >= best.rule {
            return;
        }
        if remaining == 0 {
            if n.end < best.rule {
                best.rule = n.end;
                best.captures = *captures;
            }
            return;
        }
        if remaining < n.min_depth || remaining > n.max_depth {
            return;
        }
        let bytes = name.as_bytes();
        let end = memchr::memchr(b'.', &bytes[pos..]).map_or(name.len(), |i| pos + i);
        let segment = &name[pos..end];
        let next = end + 1;
        if let Some(&child) = n.literal.get(segment) {
            self.search(child as usize, name, next, remaining - 1, captures, best);
        }
        for (glob, child) in &n.globs {
            let mark = captures.len;
            if glob.matches(segment, pos, captures) {
                self.search(*child as usize, name, next, remaining - 1, captures, best);
            }
            captures.len = mark;
        }
        if n.star != NONE {
            captures.push(pos, end);
            self.search(n.star as usize, name, next, remaining - 1, captures, best);
            captures.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(patterns: &[&str]) -> GlobTrie {
        let mut trie = GlobTrie::new();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(i as u32, &GlobPattern::parse(p).unwrap());
        }
        trie
    }

    fn find(trie: &GlobTrie, name: &str) -> Option<(u32, Vec<String>)> {
        trie.find(name, NONE).map(|found| {
            let caps = (1..=found.captures.len)
                .map(|i| found.captures.get(name, i).to_string())
                .collect();
            (found.rule, caps)
        })
    }

    #[test]
    fn the_lowest_index_wins_across_branches() {
        let t = trie(&["a.*.c", "a.b.*", "*.b.c"]);
        assert_eq!(find(&t, "a.b.c"), Some((0, vec!["b".into()])));
        assert_eq!(find(&t, "x.b.c"), Some((2, vec!["x".into()])));
        assert_eq!(find(&t, "a.b.d"), Some((1, vec!["d".into()])));
        assert_eq!(find(&t, "a.b"), None);
        assert_eq!(find(&t, "a.b.c.d"), None);
    }

    #[test]
    fn segment_globs_capture_within_a_segment() {
        let t = trie(&["api.request_*_seconds.*", "api.*"]);
        assert_eq!(
            find(&t, "api.request_get_seconds.x"),
            Some((0, vec!["get".into(), "x".into()]))
        );
        assert_eq!(
            find(&t, "api.request__seconds."),
            Some((0, vec!["".into(), "".into()]))
        );
        assert_eq!(
            find(&t, "api.request_get"),
            Some((1, vec!["request_get".into()]))
        );
    }

    #[test]
    fn several_stars_in_a_segment_take_the_shortest_first() {
        let t = trie(&["*_*"]);
        assert_eq!(find(&t, "a_b_c"), Some((0, vec!["a".into(), "b_c".into()])));
        let t = trie(&["x*y*z"]);
        assert_eq!(find(&t, "xyz"), Some((0, vec!["".into(), "".into()])));
        assert_eq!(find(&t, "xz"), None);
    }

    #[test]
    fn a_bound_excludes_later_rules() {
        let t = trie(&["a.*", "a.b"]);
        assert!(t.find("a.b", 0).is_none());
        assert_eq!(t.find("a.b", 5).unwrap().rule, 0);
    }

    #[test]
    fn double_stars_are_refused() {
        assert!(GlobPattern::parse("a.**").is_err());
        assert!(GlobPattern::parse("").is_err());
    }
}
