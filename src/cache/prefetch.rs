//! Coalesced reads of frames from a remote cache. A restore says up front which frames of
//! file contents it will need ([`Cache::plan_reads`]); they are grouped per pack into runs
//! (neighbours at most [`MAX_GAP`] apart, at most [`MAX_RUN`] compressed bytes each). The
//! first time a thread needs a frame of a run, the whole run is fetched with ONE ranged read
//! and its frames are kept, compressed, until used; a frame is then decompressed and checked
//! by its reader as any other ([`Cache::stream`]). A large object's frames count as one
//! frame here when they take at most [`MAX_FRAME`] bytes; larger ones are streamed. The restore's writer threads fetch runs
//! in parallel, one each at most (so 2 x jobs requests in flight), and a run is fetched once
//! (a second thread needing it waits for the first).
//!
//! Memory stays bounded whatever the cache size: at most [`MAX_KEPT`] bytes of compressed
//! frames are kept (the oldest go first; a frame evicted before its use is fetched again on
//! its own), plus one run per thread being read.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::{pack_key, Cache, CacheError, Location, StorageError};

/// Needed frames of one pack closer than this are fetched together, the bytes between them
/// read and dropped.
pub const MAX_GAP: u64 = 64 << 10;
/// A run spans at most this many bytes.
pub const MAX_RUN: u64 = 8 << 20;
/// Frames (a large object's run of frames counts as one) larger than this are streamed,
/// not planned.
pub const MAX_FRAME: u64 = 4 << 20;
/// Compressed frames kept for their readers, at most.
pub const MAX_KEPT: usize = 64 << 20;

/// One ranged read's worth of frames of a pack.
struct Run {
    start: u64,
    end: u64,
    /// (offset, length) of the frames wanted, sorted.
    frames: Vec<(u64, u64)>,
    /// Set once fetched (or failed: the readers then read their frames alone).
    fetched: OnceLock<()>,
}

/// The runs planned and the frames fetched and not yet used.
#[derive(Default)]
pub(super) struct Prefetch {
    /// Per pack number, its runs by start.
    runs: RwLock<HashMap<u32, Vec<Arc<Run>>>>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    frames: HashMap<(u32, u64), Vec<u8>>,
    order: VecDeque<(u32, u64)>,
    bytes: usize,
}

impl Kept {
    fn insert(&mut self, key: (u32, u64), bytes: Vec<u8>) {
        self.bytes += bytes.len();
        match self.frames.insert(key, bytes) {
            Some(old) => self.bytes -= old.len(),
            None => self.order.push_back(key),
        }
        while self.bytes > MAX_KEPT {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(f) = self.frames.remove(&old) {
                self.bytes -= f.len();
            }
        }
        // Keys of frames taken since linger in `order`: dropped now and then.
        if self.order.len() > 2 * self.frames.len() + 1024 {
            let frames = &self.frames;
            self.order.retain(|k| frames.contains_key(k));
        }
    }

    fn take(&mut self, key: (u32, u64)) -> Option<Vec<u8>> {
        let f = self.frames.remove(&key)?;
        self.bytes -= f.len();
        Some(f)
    }
}

/// Group `frames` (pack number, offset, length) into runs, per pack.
fn runs_of(mut frames: Vec<(u32, u64, u64)>) -> HashMap<u32, Vec<Arc<Run>>> {
    frames.sort_unstable();
    frames.dedup_by_key(|f| (f.0, f.1));
    let mut out: HashMap<u32, Vec<Arc<Run>>> = HashMap::new();
    let mut cur: Option<(u32, Run)> = None;
    for (pack, offset, len) in frames {
        let end = offset.saturating_add(len);
        if let Some((p, run)) = &mut cur {
            if *p == pack
                && offset >= run.end
                && offset - run.end <= MAX_GAP
                && end - run.start <= MAX_RUN
            {
                run.end = end;
                run.frames.push((offset, len));
                continue;
            }
        }
        if let Some((p, run)) = cur.take() {
            out.entry(p).or_default().push(Arc::new(run));
        }
        cur = Some((
            pack,
            Run {
                start: offset,
                end,
                frames: vec![(offset, len)],
                fetched: OnceLock::new(),
            },
        ));
    }
    if let Some((p, run)) = cur {
        out.entry(p).or_default().push(Arc::new(run));
    }
    out
}

impl Cache {
    /// Plan coalesced reads of the frames holding the objects at `locations` (see the module
    /// documentation); only on a remote backend, where a request costs a round trip. Objects
    /// whose frames take more than [`MAX_FRAME`] bytes are streamed as before, left out.
    pub fn plan_reads(&self, locations: &[Location]) {
        if !self.storage.remote() {
            return;
        }
        let frames = locations
            .iter()
            .filter(|l| l.frame_len <= MAX_FRAME)
            .map(|l| (l.pack, l.frame_offset, l.frame_len))
            .collect();
        *self.prefetch.runs.write().expect("runs") = runs_of(frames);
    }

    /// The compressed frame at `loc` if a planned run holds it, taken: fetched with its run
    /// the first time. `None`: read it alone.
    pub(super) fn prefetched(&self, loc: &Location) -> Result<Option<Vec<u8>>, CacheError> {
        self.with_run(loc, |kept, key| kept.take(key))
    }

    /// Copy the compressed frame at `loc` to `out` if a planned run holds it (see
    /// [`Cache::prefetched`]), and leave it kept: several objects share a small frame, and
    /// threads writing them at once must not each read it alone. Its reader lets go of it
    /// with [`Cache::release_prefetched`] once it is in the frame cache. `false`: not kept.
    pub(super) fn prefetched_into(
        &self,
        loc: &Location,
        out: &mut Vec<u8>,
    ) -> Result<bool, CacheError> {
        let copied = self.with_run(loc, |kept, key| {
            kept.frames.get(&key).map(|f| out.extend_from_slice(f))
        })?;
        Ok(copied.is_some())
    }

    /// Drop the compressed frame at `loc` (decompressed and cached by its reader).
    pub(super) fn release_prefetched(&self, loc: &Location) {
        if self.storage.remote() {
            let key = (loc.pack, loc.frame_offset);
            self.prefetch.kept.lock().expect("kept").take(key);
        }
    }

    /// `get` applied to the kept frames, after the run holding `loc` (if one does) is fetched.
    fn with_run<T>(
        &self,
        loc: &Location,
        mut get: impl FnMut(&mut Kept, (u32, u64)) -> Option<T>,
    ) -> Result<Option<T>, CacheError> {
        let key = (loc.pack, loc.frame_offset);
        if let Some(f) = get(&mut self.prefetch.kept.lock().expect("kept"), key) {
            return Ok(Some(f));
        }
        let run = {
            let runs = self.prefetch.runs.read().expect("runs");
            let Some(runs) = runs.get(&loc.pack) else {
                return Ok(None);
            };
            let i = runs.partition_point(|r| r.start <= loc.frame_offset);
            match i.checked_sub(1).map(|i| &runs[i]) {
                Some(r)
                    if r.frames
                        .binary_search(&(loc.frame_offset, loc.frame_len))
                        .is_ok() =>
                {
                    r.clone()
                }
                _ => return Ok(None),
            }
        };
        // A failed run leaves its frames to be read alone (and fail, or retry, alone).
        run.fetched.get_or_init(|| {
            let _ = self.fetch_run(loc.pack, &run);
        });
        Ok(get(&mut self.prefetch.kept.lock().expect("kept"), key))
    }

    /// One ranged read of `run`, its frames kept.
    fn fetch_run(&self, pack_no: u32, run: &Run) -> Result<(), CacheError> {
        let pack = pack_key(&self.pack_id(pack_no));
        let err = |e: std::io::Error| StorageError(self.storage.describe(&pack), e);
        let mut r = self
            .storage
            .get_range(&pack, run.start, run.end - run.start)?;
        let mut at = run.start;
        for &(offset, len) in &run.frames {
            std::io::copy(&mut (&mut r).take(offset - at), &mut std::io::sink()).map_err(err)?;
            let mut frame = Vec::with_capacity(len as usize);
            (&mut r).take(len).read_to_end(&mut frame).map_err(err)?;
            if frame.len() as u64 != len {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the pack ends inside a frame",
                ))
                .into());
            }
            self.prefetch
                .kept
                .lock()
                .expect("kept")
                .insert((pack_no, offset), frame);
            at = offset + len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlobId, LocalDir, ObjectKind, ObjectWriter, Packer, Storage};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local directory posing as a remote backend whose ranged reads are counted and slow
    /// (so that threads reading at once overlap).
    struct Remote(LocalDir, Arc<AtomicUsize>);

    impl Storage for Remote {
        fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
            self.0.get(key, max)
        }
        fn get_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            self.0.get_range(key, offset, len)
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
            self.0.put_if_absent(key, data)
        }
        fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
            self.0.writer()
        }
        fn sync(&self) -> Result<(), StorageError> {
            self.0.sync()
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.0.list(prefix)
        }
        fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
            self.0.size(key)
        }
        fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key)
        }
        fn describe(&self, key: &str) -> String {
            self.0.describe(key)
        }
        fn remote(&self) -> bool {
            true
        }
    }

    #[test]
    fn threads_reading_objects_of_one_frame_at_once_share_its_planned_read() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<Vec<u8>> = (0..32u32)
            .map(|i| (0..2000u32).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        {
            let cache = Cache::open_dir(dir.path()).unwrap();
            let packer = Packer::new(&cache, 1);
            for b in &blobs {
                assert!(packer.claim(BlobId::of(b)));
                packer.add(ObjectKind::Blob, BlobId::of(b), b).unwrap();
            }
            packer.finish().unwrap();
        }
        let counter = Arc::new(AtomicUsize::new(0));
        let cache = Cache::open(Box::new(Remote(
            LocalDir::open(dir.path()).unwrap(),
            counter.clone(),
        )));
        let ids: Vec<BlobId> = blobs.iter().map(|b| BlobId::of(b)).collect();
        let locations: Vec<Location> = ids.iter().map(|&id| cache.location(id).unwrap()).collect();
        let frames: std::collections::HashSet<(u32, u64)> =
            locations.iter().map(|l| (l.pack, l.frame_offset)).collect();
        assert_eq!(frames.len(), 1, "small blobs of one batch share a frame");
        let requests = || counter.load(Ordering::SeqCst);
        let before = requests();
        cache.plan_reads(&locations);
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (cache, ids, blobs, barrier) = (&cache, &ids, &blobs, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let i = t * 4;
                    assert_eq!(cache.read_small(ids[i]).unwrap(), blobs[i]);
                });
            }
        });
        assert_eq!(requests() - before, 1, "one read of the run, none alone");
        // Once cached, its compressed copy is let go.
        assert!(cache.prefetch.kept.lock().unwrap().frames.is_empty());
    }

    #[test]
    fn frames_are_grouped_into_bounded_runs_of_near_neighbours() {
        let mb = 1 << 20;
        let runs = runs_of(vec![
            (0, 16, 100),
            (0, 116, 100),          // adjacent
            (0, 216 + MAX_GAP, 10), // a gap within bounds
            (0, 10 * mb, 100),      // too far
            (1, 16, 100),           // another pack
            (0, 16, 100),           // twice
        ]);
        let zero: Vec<(u64, u64, usize)> = runs[&0]
            .iter()
            .map(|r| (r.start, r.end, r.frames.len()))
            .collect();
        assert_eq!(
            zero,
            vec![(16, 226 + MAX_GAP, 3), (10 * mb, 10 * mb + 100, 1)]
        );
        assert_eq!(runs[&1].len(), 1);
        // Runs never exceed MAX_RUN.
        let many: Vec<(u32, u64, u64)> = (0..100).map(|i| (0, 16 + i * mb, mb)).collect();
        let runs = runs_of(many);
        assert!(runs[&0].iter().all(|r| r.end - r.start <= MAX_RUN));
        assert_eq!(runs[&0].len(), 100usize.div_ceil((MAX_RUN / mb) as usize));
    }

    #[test]
    fn kept_frames_stay_within_their_budget_oldest_first() {
        let mut k = Kept::default();
        let frame = 3 << 20;
        for i in 0..40u64 {
            k.insert((0, i), vec![0; frame]);
            assert!(k.bytes <= MAX_KEPT);
        }
        let kept = MAX_KEPT / frame;
        assert_eq!(k.frames.len(), kept);
        assert!(k.take((0, 0)).is_none(), "the oldest went first");
        assert_eq!(k.take((0, 39)).map(|f| f.len()), Some(frame));
        assert_eq!(k.bytes, (kept - 1) * frame);
    }
}
