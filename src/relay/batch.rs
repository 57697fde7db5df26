//! Lines into datagrams: the line splitting every relay buffer goes through, and the
//! [`Batcher`] that packs lines into datagrams of a bounded size for the sender thread.

/// The non-empty lines of `bytes`: split on `\n`, one `\r` before it stripped, as the parser
/// reads a datagram. A relay buffer holds datagrams and runs of TCP lines one after the
/// other, separated by `\n`, so this also splits a whole buffer.
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    // memchr finds the newlines a vector at a time; the sender splits every relayed byte.
    let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    let mut start = 0;
    ends.map(move |end| {
        let line = &bytes[start..end];
        start = end + 1;
        line.strip_suffix(b"\r").unwrap_or(line)
    })
    .filter(|line| !line.is_empty())
}

/// Packs lines into datagrams of at most `max` bytes, lines joined with `\n` (no trailing
/// newline), never splitting a line. A line is never longer than `max` once it is in: longer
/// ones are refused by [`Batcher::push`]. Its one buffer is allocated once.
#[derive(Debug)]
pub struct Batcher {
    datagram: Vec<u8>,
    lines: u64,
    max: usize,
}

impl Batcher {
    /// A batcher for datagrams of at most `max` bytes (at least 1).
    pub fn new(max: usize) -> Batcher {
        let max = max.max(1);
        Batcher {
            datagram: Vec::with_capacity(max),
            lines: 0,
            max,
        }
    }

    /// Adds `line`, first handing `emit` the datagram so far (and its line count) if the line
    /// would not fit beside it. A line longer than the datagram size is not added: `false`.
    pub fn push(&mut self, line: &[u8], emit: impl FnOnce(&[u8], u64)) -> bool {
        if line.len() > self.max {
            return false;
        }
        if !self.datagram.is_empty() && self.datagram.len() + 1 + line.len() > self.max {
            self.flush(emit);
        }
        if !self.datagram.is_empty() {
            self.datagram.push(b'\n');
        }
        self.datagram.extend_from_slice(line);
        self.lines += 1;
        true
    }

    /// Hands `emit` the datagram so far, if it holds a line.
    pub fn flush(&mut self, emit: impl FnOnce(&[u8], u64)) {
        if self.lines > 0 {
            emit(&self.datagram, self.lines);
        }
        self.datagram.clear();
        self.lines = 0;
    }

    /// Lines waiting for the next datagram.
    pub fn pending_lines(&self) -> u64 {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every datagram a batcher of `max` emits for `lines` in turn, then flushed; and the
    /// lines it refused.
    fn batch(max: usize, input: &[&[u8]]) -> (Vec<(Vec<u8>, u64)>, usize) {
        let mut batcher = Batcher::new(max);
        let mut out = Vec::new();
        let mut refused = 0;
        for line in input {
            if !batcher.push(line, |d, n| out.push((d.to_vec(), n))) {
                refused += 1;
            }
        }
        batcher.flush(|d, n| out.push((d.to_vec(), n)));
        (out, refused)
    }

    #[test]
    fn lines_that_fit_share_a_datagram_joined_by_newlines() {
        let (out, refused) = batch(100, &[b"a:1|c", b"b:2|g", b"c:3|ms"]);
        assert_eq!(out, [(b"a:1|c\nb:2|g\nc:3|ms".to_vec(), 3)]);
        assert_eq!(refused, 0);
    }

    #[test]
    fn a_datagram_of_exactly_the_limit_is_sent_whole() {
        // 5 + 1 + 4 = 10 bytes.
        let (out, _) = batch(10, &[b"a:1|c", b"b:2|", b"c"]);
        assert_eq!(out, [(b"a:1|c\nb:2|".to_vec(), 2), (b"c".to_vec(), 1)]);
    }

    #[test]
    fn a_line_that_would_pass_the_limit_starts_the_next_datagram() {
        let (out, _) = batch(10, &[b"a:1|c", b"bb:2|c"]);
        assert_eq!(out, [(b"a:1|c".to_vec(), 1), (b"bb:2|c".to_vec(), 1)]);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_and_the_rest_go_on() {
        let (out, refused) = batch(8, &[b"a:1|c", b"long.name:1|c", b"b:1|c"]);
        assert_eq!(refused, 1);
        assert_eq!(out, [(b"a:1|c".to_vec(), 1), (b"b:1|c".to_vec(), 1)]);
        let (out, refused) = batch(5, &[b"a:1|c"]);
        assert_eq!(
            (out.len(), refused),
            (1, 0),
            "a line of exactly the limit fits"
        );
    }

    #[test]
    fn flushing_an_empty_batcher_emits_nothing() {
        let mut batcher = Batcher::new(10);
        batcher.flush(|_, _| panic!("nothing to send"));
        assert_eq!(batcher.pending_lines(), 0);
    }

    #[test]
    fn lines_skips_empty_lines_and_strips_one_carriage_return() {
        let split: Vec<&[u8]> = lines(b"a:1|c\r\n\n\nb:2|c\r\r\nc").collect();
        assert_eq!(split, [&b"a:1|c"[..], b"b:2|c\r", b"c"]);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(lines(b"\n\r\n").count(), 0);
    }

    proptest! {
        /// Whatever the lines and the limit: datagrams never pass it, no line is split or
        /// reordered, every line that fits arrives exactly once, and each datagram's count is
        /// its lines.
        #[test]
        fn datagrams_carry_every_fitting_line_once_in_order_within_the_limit(
            max in 1usize..64,
            input in prop::collection::vec("[a-z:|.]{1,80}", 0..60),
        ) {
            let input: Vec<&[u8]> = input.iter().map(|l| l.as_bytes()).collect();
            let (out, refused) = batch(max, &input);
            let mut received: Vec<Vec<u8>> = Vec::new();
            for (datagram, count) in &out {
                prop_assert!(datagram.len() <= max);
                let split: Vec<Vec<u8>> = datagram.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                prop_assert_eq!(split.len() as u64, *count);
                received.extend(split);
            }
            let fitting: Vec<Vec<u8>> =
                input.iter().filter(|l| l.len() <= max).map(|l| l.to_vec()).collect();
            prop_assert_eq!(refused, input.len() - fitting.len());
            prop_assert_eq!(received, fitting);
        }
    }
}
