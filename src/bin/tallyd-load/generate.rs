//! The deterministic line generator behind `send`: which series each line hits (seeded random or
//! round robin), the type a series keeps, the value, the StatsD/DogStatsD text, and the
//! Prometheus series text tallyd will expose for a counter series. Everything follows from
//! `--seed`, so two runs with the same flags produce the same bytes.

use crate::{Order, SendArgs};

/// splitmix64: the stream of values, and the hash of a series number.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in 0..n (Lemire's multiply-shift; the bias is far below anything measurable).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const TYPES: [&str; 6] = ["c", "g", "ms", "h", "d", "s"];
pub(crate) const COUNTER: u8 = 0;

fn parse_mix(text: &str) -> Result<[u64; 6], String> {
    let mut weights = [0u64; 6];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once([':', '=']) {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("--mix: bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let index = TYPES
            .iter()
            .position(|t| *t == name)
            .ok_or_else(|| format!("--mix: unknown type {name:?} (c, g, ms, h, d, s)"))?;
        weights[index] += weight;
    }
    if weights.iter().sum::<u64>() == 0 {
        return Err("--mix: all weights are zero".into());
    }
    Ok(weights)
}

/// What one line was, for the accounting once its datagram is accepted.
#[derive(Clone, Copy)]
pub(crate) struct LineRecord {
    pub(crate) series: u64,
    pub(crate) kind: u8,
    pub(crate) value: u32,
}

pub(crate) struct Generator {
    prefix: Vec<u8>,
    series: u64,
    /// Distinct metric names per type (reported as `families`).
    pub(crate) families: u64,
    tags: usize,
    /// Cumulative type weights.
    cumulative: [u64; 6],
    seed: u64,
    order: Order,
    next_seq: u64,
    rng: Rng,
}

impl Generator {
    pub(crate) fn new(args: &SendArgs) -> Result<Self, String> {
        if args.series == 0 {
            return Err("--series must be at least 1".into());
        }
        let weights = parse_mix(&args.mix)?;
        let mut cumulative = [0u64; 6];
        let mut sum = 0;
        for (c, w) in cumulative.iter_mut().zip(weights) {
            sum += w;
            *c = sum;
        }
        let families = if args.tags == 0 {
            args.series
        } else {
            args.families
                .unwrap_or(args.series.min(10))
                .clamp(1, args.series)
        };
        Ok(Generator {
            prefix: args.prefix.as_bytes().to_vec(),
            series: args.series,
            families,
            tags: args.tags,
            cumulative,
            seed: args.seed,
            order: args.order,
            next_seq: args.start % args.series,
            rng: Rng(mix64(args.seed ^ 0x7461_6C6C_7964)),
        })
    }

    /// The type of a series: a weighted pick from a hash of the seed and the series number, so
    /// a series never changes type.
    fn kind_of(&self, series: u64) -> u8 {
        let total = self.cumulative[5];
        let pick = mix64(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ series) % total;
        self.cumulative.iter().position(|&c| pick < c).unwrap() as u8
    }

    fn tag_value(n: u64, j: usize) -> u64 {
        (n.wrapping_mul(31).wrapping_add(j as u64 * 7)) % 10
    }

    /// Appends the next line (without newline) to `out`.
    pub(crate) fn line(&mut self, out: &mut Vec<u8>) -> LineRecord {
        let series = match self.order {
            Order::Seq => {
                let s = self.next_seq;
                self.next_seq += 1;
                if self.next_seq == self.series {
                    self.next_seq = 0;
                }
                s
            }
            Order::Random => self.rng.below(self.series),
        };
        let kind = self.kind_of(series);
        let r = self.rng.next();
        let mut buffer = itoa::Buffer::new();
        let family = series % self.families;
        let n = series / self.families;
        let type_name = TYPES[kind as usize].as_bytes();
        out.extend_from_slice(&self.prefix);
        out.push(b'.');
        out.extend_from_slice(type_name);
        out.extend_from_slice(b".m");
        out.extend_from_slice(buffer.format(family).as_bytes());
        out.push(b':');
        let value = match kind {
            COUNTER => (r % 9 + 1) as u32,
            1 => (r % 1000) as u32,
            2 => (r % 1000) as u32,
            3 | 4 => (r % 10_000) as u32,
            _ => (r % 1000) as u32,
        };
        if kind == 5 {
            out.push(b'u');
        }
        out.extend_from_slice(buffer.format(value).as_bytes());
        out.push(b'|');
        out.extend_from_slice(type_name);
        if self.tags > 0 {
            out.extend_from_slice(b"|#series:");
            out.extend_from_slice(buffer.format(n).as_bytes());
            for j in 1..self.tags {
                out.extend_from_slice(b",tag");
                out.extend_from_slice(buffer.format(j).as_bytes());
                out.extend_from_slice(b":value");
                out.extend_from_slice(buffer.format(Self::tag_value(n, j)).as_bytes());
            }
        }
        LineRecord {
            series,
            kind,
            value,
        }
    }

    /// The Prometheus series text of a counter series, as tallyd exposes it.
    pub(crate) fn counter_series_text(&self, series: u64) -> String {
        let family = series % self.families;
        let n = series / self.families;
        let prefix: String = String::from_utf8_lossy(&self.prefix)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut text = format!("{prefix}_c_m{family}_total");
        if self.tags > 0 {
            let mut labels = vec![format!("series=\"{n}\"")];
            for j in 1..self.tags {
                labels.push(format!("tag{j}=\"value{}\"", Self::tag_value(n, j)));
            }
            labels.sort();
            text.push('{');
            text.push_str(&labels.join(","));
            text.push('}');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn args(extra: &[&str]) -> SendArgs {
        let mut argv = vec!["tallyd-load", "send"];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            Command::Send(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn lines_are_deterministic_and_well_formed() {
        let a = args(&[
            "--series",
            "100",
            "--tags",
            "3",
            "--mix",
            "c:1,g:1,ms:1,h:1,d:1,s:1",
        ]);
        let mut g1 = Generator::new(&a).unwrap();
        let mut g2 = Generator::new(&a).unwrap();
        for _ in 0..1000 {
            let (mut l1, mut l2) = (Vec::new(), Vec::new());
            g1.line(&mut l1);
            g2.line(&mut l2);
            assert_eq!(l1, l2);
            let text = String::from_utf8(l1).unwrap();
            assert!(text.starts_with("tl."), "{text}");
            assert_eq!(text.matches("|#").count(), 1, "{text}");
            assert_eq!(text.matches(',').count(), 2, "{text}");
        }
    }

    #[test]
    fn seq_order_touches_every_series_once() {
        let a = args(&["--series", "50", "--order", "seq"]);
        let mut g = Generator::new(&a).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            assert!(seen.insert(g.line(&mut Vec::new()).series));
        }
    }
}
