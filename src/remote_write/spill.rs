//! The spill of one `[[remote_write]]` endpoint (`spill = true` or `spill_max_bytes`): samples
//! its memory queue had no room for, kept in append-only segment files under
//! `<data dir>/remote_write/<endpoint>/n<shards>/<shard>/<seq>.seg` until the shard sends them.
//!
//! - Each shard has its own log, so reading one back keeps the shard's order, and with it each
//!   series' order. Segments are numbered across the endpoint: the oldest on disk is the one
//!   with the lowest number, whatever its shard, and it is the one dropped when the spill is
//!   at `spill_max_bytes` (counted `spill_full`). At shutdown the memory queue, older than
//!   anything spilled, goes into a segment numbered below the shard's first.
//! - The snapshot never writes here: it hands each shard's encoded overflow to the writer
//!   thread over a bounded channel, and a full channel (a slow disk) drops the chunk as a full
//!   memory queue would. The shard tasks read on the blocking pool.
//! - A segment is a header, then records: `len` (u32 LE), the CRC-32 of the payload (u32 LE),
//!   the payload (timestamp i64 LE, value bits u64 LE, label count u16 LE, then each label:
//!   name length u16 LE, name, value length u32 LE, value). A segment cut short (`kill -9` in a
//!   write) or damaged is kept up to its last good record, and counted as corrupt, at start.
//! - Writes are not synced one by one: a `kill -9` loses nothing the kernel has, a power cut
//!   may lose the last seconds. Shutdown syncs what it leaves.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::stats::{Drop, RemoteStats};
use super::wire::{Label, Sample};
use crate::listen::LogLimit;

/// The first bytes of every segment (the format's version is its last digit).
const MAGIC: &[u8; 8] = b"TLYRWS1\n";

/// A record's length and CRC.
const RECORD_HEAD: usize = 8;

/// A record longer than this is damage, not data (label sets are far smaller).
const MAX_RECORD: usize = 1 << 24;

/// The largest segment; smaller when `spill_max_bytes` is small, so the bound is kept by
/// dropping a small part of the spill rather than most of it.
const MAX_SEGMENT: u64 = 4 << 20;

/// Chunks waiting for the writer thread; more and the snapshot drops them.
pub const CHUNKS: usize = 64;

/// One spilled sample with its series' labels.
pub type Record = (Vec<Label>, Sample);

/// A shard's overflow of one snapshot, encoded, on its way to the writer thread.
pub struct Chunk {
    pub shard: usize,
    pub bytes: Vec<u8>,
    pub samples: u64,
}

/// One segment on disk.
#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    samples: u64,
}

/// One shard's segments, oldest first; the last is appended to while `open` holds it.
struct ShardLog {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    open: Option<File>,
}

/// One endpoint's spill.
pub struct Spill {
    shards: Vec<Mutex<ShardLog>>,
    max_bytes: u64,
    segment_bytes: u64,
    next_seq: AtomicU64,
    stats: Arc<RemoteStats>,
    log: Mutex<LogLimit>,
}

/// A segment read back.
pub struct Loaded {
    /// Its samples with their labels, in the order they were spilled.
    pub records: Vec<Record>,
    /// The samples it was counted as holding when written.
    pub counted: u64,
}

/// The directory of an endpoint's spill: its `remote` label when that is a plain name, else a
/// hash of it (a URL).
pub fn endpoint_dir(data_dir: &Path, remote: &str) -> PathBuf {
    let plain = !remote.is_empty()
        && !remote.starts_with('.')
        && remote.len() <= 64
        && remote
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    let name = if plain {
        remote.to_owned()
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(remote.as_bytes());
        format!("url-{}", hex::encode(&digest[..8]))
    };
    data_dir.join("remote_write").join(name)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Appends one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, labels: &[Label], sample: Sample) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEAD]);
    out.extend_from_slice(&sample.timestamp.to_le_bytes());
    out.extend_from_slice(&sample.value.to_bits().to_le_bytes());
    out.extend_from_slice(&(labels.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for label in labels.iter().take(u16::MAX as usize) {
        // Label names are short (the registry bounds them); a longer one is cut, not wrapped.
        let name = &label.name.as_bytes()[..label.name.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(label.value.len() as u32).to_le_bytes());
        out.extend_from_slice(label.value.as_bytes());
    }
    let len = (out.len() - start - RECORD_HEAD) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_HEAD..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The records of a segment's body (after the header), and the length of its good part: all
/// of it unless a record is cut short or damaged, where reading stops.
pub fn decode_records(body: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let Some(head) = body.get(at..at + RECORD_HEAD) else {
            break;
        };
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = body.get(at + RECORD_HEAD..at + RECORD_HEAD + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(record) = decode_payload(payload) else {
            break;
        };
        records.push(record);
        at += RECORD_HEAD + len;
    }
    (records, at)
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut rest = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let timestamp = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let value = f64::from_bits(u64::from_le_bytes(take(8)?.try_into().ok()?));
    let count = u16::from_le_bytes(take(2)?.try_into().ok()?);
    let mut labels = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let name = String::from_utf8(take(n)?.to_vec()).ok()?;
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let value = String::from_utf8(take(n)?.to_vec()).ok()?;
        labels.push(Label { name, value });
    }
    if !rest.is_empty() {
        return None;
    }
    Some((labels, Sample { value, timestamp }))
}

impl Spill {
    /// Opens (creating) the spill in `dir` for `shards` shards, bounded at `max_bytes`, and
    /// takes in what an earlier run left: damaged tails are cut (and counted), and a spill left
    /// under another shard count is dealt out again by `shard_of`. Answers it with the samples
    /// each shard has waiting.
    pub fn open(
        dir: &Path,
        shards: usize,
        max_bytes: u64,
        stats: Arc<RemoteStats>,
        shard_of: impl Fn(&[Label]) -> usize,
    ) -> Result<(Spill, Vec<u64>), String> {
        let layout = dir.join(format!("n{shards}"));
        let mut logs = Vec::with_capacity(shards);
        let mut highest = 1u64 << 32;
        for index in 0..shards {
            let shard_dir = layout.join(index.to_string());
            fs::create_dir_all(&shard_dir)
                .map_err(|e| format!("cannot create {}: {e}", shard_dir.display()))?;
            let segments = recover(&shard_dir, &stats)?;
            if let Some(last) = segments.back() {
                highest = highest.max(last.seq);
            }
            logs.push(Mutex::new(ShardLog {
                dir: shard_dir,
                segments,
                open: None,
            }));
        }
        let spill = Spill {
            shards: logs,
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4096, MAX_SEGMENT),
            next_seq: AtomicU64::new(highest + 1),
            stats,
            log: Mutex::new(LogLimit::default()),
        };
        let on_disk: u64 = spill.each_segment().map(|s| s.bytes).sum();
        spill.stats.spilled_bytes.store(on_disk, Ordering::Relaxed);
        spill.adopt_other_layouts(dir, &layout, shard_of);
        let waiting = spill
            .shards
            .iter()
            .map(|log| log.lock().segments.iter().map(|s| s.samples).sum())
            .collect();
        Ok((spill, waiting))
    }

    fn each_segment(&self) -> impl Iterator<Item = Segment> + '_ {
        self.shards.iter().flat_map(|log| {
            log.lock()
                .segments
                .iter()
                .map(|s| Segment { ..*s })
                .collect::<Vec<_>>()
        })
    }

    /// Deals the records of a spill written with another shard count out to this one's
    /// shards, each old shard's segments in order (so each series keeps its order), then
    /// removes it. A crash in the middle may send some of them twice, never loses them.
    fn adopt_other_layouts(&self, dir: &Path, layout: &Path, shard_of: impl Fn(&[Label]) -> usize) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == layout || !path.is_dir() {
                continue;
            }
            let mut shard_dirs: Vec<PathBuf> = fs::read_dir(&path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            shard_dirs.sort();
            for shard_dir in shard_dirs {
                let segments = recover(&shard_dir, &self.stats).unwrap_or_default();
                for segment in segments {
                    let Some((records, _)) = read_segment(&segment_path(&shard_dir, segment.seq))
                    else {
                        continue;
                    };
                    let mut chunks: Vec<Vec<u8>> = vec![Vec::new(); self.shards.len()];
                    let mut counts = vec![0u64; self.shards.len()];
                    for (labels, sample) in &records {
                        let shard = shard_of(labels) % self.shards.len();
                        encode_record(&mut chunks[shard], labels, *sample);
                        counts[shard] += 1;
                    }
                    for (shard, bytes) in chunks.into_iter().enumerate() {
                        if !bytes.is_empty() {
                            self.append(shard, &bytes, counts[shard], &mut |_, n, why| {
                                self.stats.add_dropped(why, n)
                            });
                        }
                    }
                }
            }
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!("cannot remove the old spill {}: {e}", path.display());
            }
        }
    }

    /// Appends a chunk to its shard's open segment (a new one when there is none or it is
    /// full), first dropping the oldest segments the bound needs gone. `lost(shard, samples,
    /// reason)` hears of every sample given up.
    pub fn append(
        &self,
        shard: usize,
        bytes: &[u8],
        samples: u64,
        lost: &mut dyn FnMut(usize, u64, Drop),
    ) {
        let need = bytes.len() as u64;
        if need + MAGIC.len() as u64 > self.max_bytes {
            lost(shard, samples, Drop::SpillFull);
            return;
        }
        self.make_room(need + MAGIC.len() as u64, lost);
        let mut log = self.shards[shard].lock();
        let fits = log
            .segments
            .back()
            .is_some_and(|last| last.bytes + need <= self.segment_bytes);
        if log.open.is_none() || !fits {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let path = segment_path(&log.dir, seq);
            let opened = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(MAGIC).map(|()| file));
            match opened {
                Ok(file) => {
                    log.open = Some(file);
                    log.segments.push_back(Segment {
                        seq,
                        bytes: MAGIC.len() as u64,
                        samples: 0,
                    });
                    self.stats
                        .spilled_bytes
                        .fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    drop(log);
                    self.failed(&path, &e.to_string());
                    lost(shard, samples, Drop::SpillError);
                    return;
                }
            }
        }
        let written = log.open.as_mut().map(|file| file.write_all(bytes));
        match written {
            Some(Ok(())) => {
                if let Some(last) = log.segments.back_mut() {
                    last.bytes += need;
                    last.samples += samples;
                }
                self.stats.spilled_bytes.fetch_add(need, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                // Part of the chunk may be in the file: it is read back as a damaged tail.
                // Later chunks go to a new segment.
                log.open = None;
                let path = log.dir.clone();
                drop(log);
                self.failed(&path, &e.to_string());
                lost(shard, samples, Drop::SpillError);
            }
            None => lost(shard, samples, Drop::SpillError),
        }
    }

    fn failed(&self, path: &Path, why: &str) {
        if self.log.lock().allow() {
            tracing::error!(
                remote = %self.stats.remote,
                "remote-write spill: cannot write {}: {why}; samples dropped",
                path.display()
            );
        }
    }

    /// Drops the oldest segments, across shards, until `need` more bytes fit the bound.
    fn make_room(&self, need: u64, lost: &mut dyn FnMut(usize, u64, Drop)) {
        while self.stats.spilled_bytes.load(Ordering::Relaxed) + need > self.max_bytes {
            let oldest = self
                .shards
                .iter()
                .enumerate()
                .filter_map(|(i, log)| log.lock().segments.front().map(|s| (s.seq, i)))
                .min();
            let Some((seq, shard)) = oldest else { return };
            let mut log = self.shards[shard].lock();
            if log.segments.front().map(|s| s.seq) != Some(seq) {
                continue; // read back meanwhile
            }
            let Some(segment) = log.segments.pop_front() else {
                continue;
            };
            if log.segments.is_empty() {
                log.open = None;
            }
            let _ = fs::remove_file(segment_path(&log.dir, segment.seq));
            drop(log);
            self.stats
                .spilled_bytes
                .fetch_sub(segment.bytes, Ordering::Relaxed);
            lost(shard, segment.samples, Drop::SpillFull);
        }
    }

    /// Takes the shard's oldest segment off the disk and answers its records; `None` when the
    /// shard has none (its chunks may still be on their way to the writer).
    pub fn take_oldest(&self, shard: usize) -> Option<Loaded> {
        let mut log = self.shards[shard].lock();
        let segment = log.segments.pop_front()?;
        if log.segments.is_empty() {
            log.open = None;
        }
        let path = segment_path(&log.dir, segment.seq);
        let read = read_segment(&path);
        let _ = fs::remove_file(&path);
        drop(log);
        self.stats
            .spilled_bytes
            .fetch_sub(segment.bytes, Ordering::Relaxed);
        let records = match read {
            Some((records, good)) => {
                if (MAGIC.len() + good) as u64 != segment.bytes {
                    // Damaged since start (the disk, or someone else): what follows is gone.
                    self.stats.spill_corrupt.fetch_add(1, Ordering::Relaxed);
                }
                records
            }
            None => {
                self.stats.spill_corrupt.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        };
        Some(Loaded {
            records,
            counted: segment.samples,
        })
    }

    /// Writes `bytes` (the shard's memory queue at shutdown, older than anything spilled) as a
    /// segment before the shard's first, synced, then keeps the bound.
    pub fn prepend(
        &self,
        shard: usize,
        bytes: &[u8],
        samples: u64,
        lost: &mut dyn FnMut(usize, u64, Drop),
    ) {
        let mut log = self.shards[shard].lock();
        let seq = match log.segments.front() {
            Some(first) => first.seq - 1,
            None => self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        let path = segment_path(&log.dir, seq);
        let written = File::create(&path).and_then(|mut file| {
            file.write_all(MAGIC)?;
            file.write_all(bytes)?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            drop(log);
            self.failed(&path, &e.to_string());
            lost(shard, samples, Drop::Shutdown);
            return;
        }
        let size = (MAGIC.len() + bytes.len()) as u64;
        log.segments.push_front(Segment {
            seq,
            bytes: size,
            samples,
        });
        drop(log);
        self.stats.spilled_bytes.fetch_add(size, Ordering::Relaxed);
        self.make_room(0, lost);
    }

    /// Syncs the open segments to disk (at shutdown).
    pub fn sync(&self) {
        for log in &self.shards {
            let mut log = log.lock();
            if let Some(file) = log.open.take() {
                let _ = file.sync_all();
            }
            if let Ok(dir) = File::open(&log.dir) {
                let _ = dir.sync_all();
            }
        }
    }
}

/// The segments of a shard directory, oldest first, each cut back to its last good record
/// (counted as corrupt when it had to be); unreadable ones are removed.
fn recover(dir: &Path, stats: &RemoteStats) -> Result<VecDeque<Segment>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut seqs: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    let mut segments = VecDeque::with_capacity(seqs.len());
    for seq in seqs {
        let path = segment_path(dir, seq);
        let Some((records, good)) = read_segment(&path) else {
            stats.spill_corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "remote-write spill: {} is not a segment, removed",
                path.display()
            );
            let _ = fs::remove_file(&path);
            continue;
        };
        let bytes = (MAGIC.len() + good) as u64;
        let whole = path.metadata().is_ok_and(|m| m.len() == bytes);
        if !whole {
            stats.spill_corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "remote-write spill: {} ends in a damaged or cut record (a crash while writing?); \
                 read up to it, the rest dropped",
                path.display()
            );
            if let Err(e) = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(bytes))
            {
                tracing::warn!("cannot cut {}: {e}", path.display());
            }
        }
        if records.is_empty() {
            let _ = fs::remove_file(&path);
            continue;
        }
        segments.push_back(Segment {
            seq,
            bytes,
            samples: records.len() as u64,
        });
    }
    Ok(segments)
}

/// A segment's records, and the length of the body (after the header) they were read from:
/// short of the whole when the tail is damaged or cut; `None` when it cannot be read or is no
/// segment.
fn read_segment(path: &Path) -> Option<(Vec<Record>, usize)> {
    let data = fs::read(path).ok()?;
    let body = data.strip_prefix(MAGIC.as_slice())?;
    Some(decode_records(body))
}

/// The writer thread: appends each chunk in arrival order until every sender is gone.
pub fn spawn_writer(
    spill: Arc<Spill>,
    chunks: Receiver<Chunk>,
    mut lost: impl FnMut(usize, u64, Drop) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tallyd-rw-spill".into())
        .spawn(move || {
            for chunk in chunks {
                spill.append(chunk.shard, &chunk.bytes, chunk.samples, &mut lost);
            }
        })
}

/// Hands a chunk to the writer without waiting; answers it back when the writer is behind.
pub fn offer(sender: &SyncSender<Chunk>, chunk: Chunk) -> Result<(), Chunk> {
    sender.try_send(chunk).map_err(|e| match e {
        TrySendError::Full(chunk) | TrySendError::Disconnected(chunk) => chunk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_write::stats::RemoteWriteTelemetry;

    fn labels(name: &str) -> Vec<Label> {
        vec![
            Label {
                name: "__name__".into(),
                value: name.into(),
            },
            Label {
                name: "k".into(),
                value: "v\u{e9}".into(),
            },
        ]
    }

    fn chunk(name: &str, times: std::ops::Range<i64>) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        for t in times.clone() {
            encode_record(
                &mut out,
                &labels(name),
                Sample {
                    value: t as f64 / 2.0,
                    timestamp: t,
                },
            );
        }
        (out, times.count() as u64)
    }

    fn open(dir: &Path, shards: usize, max: u64) -> (Spill, Vec<u64>, Arc<RemoteStats>) {
        let stats = RemoteWriteTelemetry::default().remote("t");
        let (spill, waiting) =
            Spill::open(dir, shards, max, Arc::clone(&stats), |l| l[0].value.len()).unwrap();
        (spill, waiting, stats)
    }

    fn times(loaded: &Loaded) -> Vec<i64> {
        loaded.records.iter().map(|(_, s)| s.timestamp).collect()
    }

    #[test]
    fn records_read_back_and_a_cut_or_damaged_tail_stops_reading() {
        let (bytes, _) = chunk("a", 0..3);
        let (records, good) = decode_records(&bytes);
        assert_eq!(good, bytes.len());
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].0, labels("a"));
        assert_eq!(records[2].1.value, 1.0);
        for cut in 1..bytes.len() {
            let (records, good) = decode_records(&bytes[..cut]);
            assert!(good < cut || cut == good, "{cut}");
            assert!(records.len() < 3);
        }
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        assert_eq!(decode_records(&damaged).0.len(), 2);
    }

    #[test]
    fn chunks_come_back_in_order_and_a_restart_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, waiting, stats) = open(dir.path(), 2, 1 << 20);
        assert_eq!(waiting, [0, 0]);
        let (a, n) = chunk("a", 0..10);
        spill.append(1, &a, n, &mut |_, _, _| panic!("nothing lost"));
        let (b, n) = chunk("a", 10..20);
        spill.append(1, &b, n, &mut |_, _, _| panic!("nothing lost"));
        let (early, n) = chunk("a", -5..0);
        spill.prepend(1, &early, n, &mut |_, _, _| panic!("nothing lost"));
        spill.sync();
        assert!(stats.spilled_bytes.load(Ordering::Relaxed) > 0);
        drop(spill);

        let (spill, waiting, stats) = open(dir.path(), 2, 1 << 20);
        assert_eq!(waiting, [0, 25]);
        let mut seen = Vec::new();
        while let Some(loaded) = spill.take_oldest(1) {
            seen.extend(times(&loaded));
        }
        assert_eq!(seen, (-5..20).collect::<Vec<_>>());
        assert_eq!(stats.spilled_bytes.load(Ordering::Relaxed), 0);
        assert!(spill.take_oldest(0).is_none());
    }

    #[test]
    fn the_bound_drops_the_oldest_segments_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, _, stats) = open(dir.path(), 1, 8192);
        let mut lost = 0;
        let mut next = 0;
        for _ in 0..40 {
            let (bytes, n) = chunk("a", next..next + 10);
            next += 10;
            spill.append(0, &bytes, n, &mut |_, n, why| {
                assert_eq!(why, Drop::SpillFull);
                lost += n;
            });
        }
        let on_disk = stats.spilled_bytes.load(Ordering::Relaxed);
        assert!(on_disk <= 8192, "{on_disk}");
        let mut kept = Vec::new();
        while let Some(loaded) = spill.take_oldest(0) {
            kept.extend(times(&loaded));
        }
        assert!(lost > 0);
        assert_eq!(kept.len() as u64 + lost, 400);
        // What is kept is the newest, in order.
        assert_eq!(kept, (400 - kept.len() as i64..400).collect::<Vec<_>>());
    }

    #[test]
    fn a_cut_segment_is_read_to_its_last_good_record_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, _, _) = open(dir.path(), 1, 1 << 20);
        let (bytes, n) = chunk("a", 0..10);
        spill.append(0, &bytes, n, &mut |_, _, _| {});
        drop(spill);
        let shard_dir = dir.path().join("n1").join("0");
        let file = fs::read_dir(&shard_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let len = fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        fs::write(shard_dir.join("00000000000000000001.seg"), b"junk").unwrap();
        let (spill, waiting, stats) = open(dir.path(), 1, 1 << 20);
        assert_eq!(waiting, [9]);
        assert_eq!(stats.spill_corrupt.load(Ordering::Relaxed), 2);
        assert_eq!(
            times(&spill.take_oldest(0).unwrap()),
            (0..9).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_spill_left_under_another_shard_count_is_dealt_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let (spill, _, _) = open(dir.path(), 1, 1 << 20);
        let (a, n) = chunk("a", 0..4);
        spill.append(0, &a, n, &mut |_, _, _| {});
        let (b, n) = chunk("bb", 0..3);
        spill.append(0, &b, n, &mut |_, _, _| {});
        drop(spill);
        // shard_of: the name's length, so "a" → 1, "bb" → 0 of 2.
        let (spill, waiting, _) = open(dir.path(), 2, 1 << 20);
        assert_eq!(waiting, [3, 4]);
        assert_eq!(times(&spill.take_oldest(1).unwrap()), [0, 1, 2, 3]);
        assert!(!dir.path().join("n1").exists());
    }
}
