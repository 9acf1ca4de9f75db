//! References in file contents replaced by a placeholder, so that a file that differs from
//! another only in the store paths it names is stored as one blob (the daemons' "hash
//! rewriting", applied to dedup).
//!
//! At save, every occurrence of the hash part (32 nix-base32 characters) of one of a path's
//! references, or of the path itself, in a regular file is replaced by [`PLACEHOLDER`]; the
//! blob is the rewritten content and the tree records each replacement as a [`Rewrite`]
//! (offset, hash part). At restore, a [`Substituter`] puts the hash parts back as the blob
//! streams by; a [`Masker`] does the reverse for a file at hand (the placeholder at the
//! recorded offsets, whatever is there), so that an older build's file can be checked
//! against the blob wanted. Matches are found leftmost first and never overlap: scanning from offset 0, a
//! window of 32 bytes equal to one of the hash parts is replaced and the scan resumes after
//! it, otherwise the scan moves one byte on ([`naive_rewrite`] is this definition, the
//! reference the tests compare with).
//!
//! The placeholder is 32 times `e`, a letter nix-base32 leaves out, so it is never a hash part.
//! A file that holds the placeholder bytes literally round-trips exactly: only recorded
//! positions are substituted. Memory is bounded whatever the file size: the streaming
//! [`Rewriter`] holds at most 31 bytes back across chunks, a [`Substituter`] one chunk.

use std::collections::HashSet;
use std::io::{self, Read};

use crate::store::path::{HASH_PART_LEN, NIXBASE32_ALPHABET};

/// What a reference's hash part is replaced by in a blob.
pub const PLACEHOLDER: [u8; HASH_PART_LEN] = [b'e'; HASH_PART_LEN];

/// One replaced occurrence: where, and which hash part was there.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Rewrite {
    /// Byte offset of the occurrence in the file.
    pub offset: u64,
    /// The 32 nix-base32 characters that were there.
    pub hash_part: [u8; HASH_PART_LEN],
}

const fn base32_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < NIXBASE32_ALPHABET.len() {
        t[NIXBASE32_ALPHABET[i] as usize] = true;
        i += 1;
    }
    t
}

/// Bytes that can be part of a hash part.
static BASE32: [bool; 256] = base32_table();

/// Whether `bytes` are 32 nix-base32 characters.
pub fn is_hash_part(bytes: &[u8]) -> bool {
    bytes.len() == HASH_PART_LEN && bytes.iter().all(|&b| BASE32[b as usize])
}

/// The hash parts a path's files are scanned for: its references' and its own.
#[derive(Debug, Clone, Default)]
pub struct HashParts(HashSet<[u8; HASH_PART_LEN]>);

impl HashParts {
    /// The set of `parts`; any that are not 32 nix-base32 characters are ignored (a store
    /// path's hash part always is).
    pub fn new<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        HashParts(
            parts
                .into_iter()
                .filter(|p| is_hash_part(p.as_bytes()))
                .map(|p| p.as_bytes().try_into().expect("32 bytes"))
                .collect(),
        )
    }

    /// Whether no hash part is to be replaced.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, window: &[u8]) -> Option<[u8; HASH_PART_LEN]> {
        let w: &[u8; HASH_PART_LEN] = window.try_into().ok()?;
        self.0.contains(w).then_some(*w)
    }
}

/// The definition of the rewrite, one window at a time: the reference for the tests.
pub fn naive_rewrite(data: &mut [u8], parts: &HashParts) -> Vec<Rewrite> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + HASH_PART_LEN <= data.len() {
        if let Some(h) = parts.get(&data[i..i + HASH_PART_LEN]) {
            out.push(Rewrite {
                offset: i as u64,
                hash_part: h,
            });
            data[i..i + HASH_PART_LEN].copy_from_slice(&PLACEHOLDER);
            i += HASH_PART_LEN;
        } else {
            i += 1;
        }
    }
    out
}

/// Rewrite every window of `data` that starts before `data.len() - 31` (all that can be
/// checked), recording offsets plus `base`, until `out` holds more than `limit` (then the
/// rest is left as it is: the caller refuses the file). Only runs of 32 or more nix-base32 characters can
/// hold a match; the placeholder, written in place, ends a run. The scan looks at the last
/// byte of the next possible window first: when it is not nix-base32, no window starting
/// before it can match, and 32 bytes are skipped at once (most of a binary file).
fn scan(data: &mut [u8], base: u64, parts: &HashParts, out: &mut Vec<Rewrite>, limit: usize) {
    let n = data.len();
    let mut i = 0;
    while i + HASH_PART_LEN <= n {
        let last = i + HASH_PART_LEN - 1;
        if !BASE32[data[last] as usize] {
            i = last + 1;
            continue;
        }
        // The run holding `last`, from no earlier than `i` (windows starting before `i` were
        // ruled out already).
        let mut start = last;
        while start > i && BASE32[data[start - 1] as usize] {
            start -= 1;
        }
        let mut end = last + 1;
        while end < n && BASE32[data[end] as usize] {
            end += 1;
        }
        let mut s = start;
        while s + HASH_PART_LEN <= end {
            if let Some(h) = parts.get(&data[s..s + HASH_PART_LEN]) {
                out.push(Rewrite {
                    offset: base + s as u64,
                    hash_part: h,
                });
                data[s..s + HASH_PART_LEN].copy_from_slice(&PLACEHOLDER);
                s += HASH_PART_LEN;
                if out.len() > limit {
                    return;
                }
            } else {
                s += 1;
            }
        }
        i = end;
    }
}

/// Rewrite a whole file's contents in place; returns the replacements, by offset.
pub fn rewrite_in_place(data: &mut [u8], parts: &HashParts) -> Vec<Rewrite> {
    let mut out = Vec::new();
    if !parts.is_empty() {
        scan(data, 0, parts, &mut out, usize::MAX);
    }
    out
}

/// Rewrites a file given in chunks of any size, exactly as [`rewrite_in_place`] would the
/// whole: holds back at most the last 31 bytes of a chunk, when they may begin a match. With
/// a limit, records at most one replacement more than it (see [`Rewriter::too_many`]).
pub struct Rewriter<'p> {
    parts: &'p HashParts,
    limit: usize,
    buf: Vec<u8>,
    /// Bytes held back: the start of a run that may be a match once more bytes come.
    held: usize,
    /// File offset of `buf[0]`.
    pos: u64,
    found: Vec<Rewrite>,
}

impl<'p> Rewriter<'p> {
    /// A rewriter for the hash parts `parts`.
    pub fn new(parts: &'p HashParts) -> Self {
        Self::with_limit(parts, usize::MAX)
    }

    /// A rewriter for the hash parts `parts` that stops replacing once it found more than
    /// `limit`: the replacements of a file are held until its end (40 bytes each, for as
    /// little as 32 bytes of file), and a save refuses a path of more than a tree may hold.
    pub fn with_limit(parts: &'p HashParts, limit: usize) -> Self {
        Rewriter {
            parts,
            limit,
            buf: Vec::new(),
            held: 0,
            pos: 0,
            found: Vec::new(),
        }
    }

    /// Take the next `chunk`; `out` receives the rewritten bytes that are final.
    ///
    /// # Errors
    /// Whatever `out` returns.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.parts.is_empty() {
            self.pos += chunk.len() as u64;
            return out(chunk);
        }
        self.buf.truncate(self.held);
        self.buf.extend_from_slice(chunk);
        if self.too_many() {
            // Past the limit: the bytes pass as they are (as many as came in).
            self.pos += chunk.len() as u64;
            return out(chunk);
        }
        scan(
            &mut self.buf,
            self.pos,
            self.parts,
            &mut self.found,
            self.limit,
        );
        let run = self
            .buf
            .iter()
            .rev()
            .take(HASH_PART_LEN - 1)
            .take_while(|&&b| BASE32[b as usize])
            .count();
        let done = self.buf.len() - run;
        out(&self.buf[..done])?;
        self.buf.copy_within(done.., 0);
        self.held = run;
        self.pos += done as u64;
        Ok(())
    }

    /// Whether more replacements than the limit were found (the last bytes given were then
    /// not all rewritten, and the replacements are not all recorded).
    pub fn too_many(&self) -> bool {
        self.found.len() > self.limit
    }

    /// The end of the file: `out` receives the bytes held back; returns the replacements.
    ///
    /// # Errors
    /// Whatever `out` returns.
    pub fn finish<E>(
        mut self,
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Vec<Rewrite>, E> {
        out(&self.buf[..self.held])?;
        self.held = 0;
        Ok(self.found)
    }
}

/// A reader of a file's rewritten contents, from a reader of its real ones.
pub struct RewritingReader<'p, R> {
    inner: R,
    rewriter: Rewriter<'p>,
    chunk: Vec<u8>,
    ready: Vec<u8>,
    at: usize,
    eof: bool,
}

impl<'p, R: Read> RewritingReader<'p, R> {
    /// Read `inner` rewritten for `parts`.
    pub fn new(inner: R, parts: &'p HashParts) -> Self {
        Self::with_limit(inner, parts, usize::MAX)
    }

    /// Read `inner` rewritten for `parts`, recording at most one replacement more than
    /// `limit` ([`Rewriter::with_limit`]; what is read past them is not rewritten).
    pub fn with_limit(inner: R, parts: &'p HashParts, limit: usize) -> Self {
        RewritingReader {
            inner,
            rewriter: Rewriter::with_limit(parts, limit),
            chunk: vec![0; 256 << 10],
            ready: Vec::new(),
            at: 0,
            eof: false,
        }
    }

    /// The replacements made, once everything was read.
    pub fn rewrites(&self) -> &[Rewrite] {
        &self.rewriter.found
    }

    /// The reader it wraps.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for RewritingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.ready.len() && !self.eof {
            self.ready.clear();
            self.at = 0;
            let n = self.inner.read(&mut self.chunk)?;
            let ready = &mut self.ready;
            let mut push = |b: &[u8]| -> Result<(), ()> {
                ready.extend_from_slice(b);
                Ok(())
            };
            if n == 0 {
                self.eof = true;
                let held = self.rewriter.held;
                let _ = push(&self.rewriter.buf[..held]);
                self.rewriter.held = 0;
            } else {
                let _ = self.rewriter.feed(&self.chunk[..n], &mut push);
            }
        }
        let n = buf.len().min(self.ready.len() - self.at);
        buf[..n].copy_from_slice(&self.ready[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The recorded windows of a file, visited chunk by chunk as its bytes stream by, in order.
struct Windows<'r> {
    rewrites: &'r [Rewrite],
    /// The first rewrite not yet wholly behind `pos`.
    next: usize,
    pos: u64,
    buf: Vec<u8>,
}

impl<'r> Windows<'r> {
    fn new(rewrites: &'r [Rewrite]) -> Self {
        Windows {
            rewrites,
            next: 0,
            pos: 0,
            buf: Vec::new(),
        }
    }

    /// The next `chunk` with `each` applied to every part of a recorded window inside it:
    /// `each(bytes, rewrite, from)` gets the window's bytes in the chunk (a copy, changed in
    /// place) and their offset inside the window.
    fn apply<'a>(
        &'a mut self,
        chunk: &'a [u8],
        each: &mut impl FnMut(&mut [u8], &Rewrite, usize) -> Result<(), String>,
    ) -> Result<&'a [u8], String> {
        let start = self.pos;
        let end = start + chunk.len() as u64;
        self.pos = end;
        let len = HASH_PART_LEN as u64;
        if self.rewrites.get(self.next).is_none_or(|r| r.offset >= end) {
            return Ok(chunk);
        }
        self.buf.clear();
        self.buf.extend_from_slice(chunk);
        while let Some(r) = self.rewrites.get(self.next) {
            if r.offset >= end {
                break;
            }
            // The part of [offset, offset + 32) inside this chunk.
            let from = r.offset.max(start);
            let to = (r.offset + len).min(end);
            let (a, b) = ((from - start) as usize, (to - start) as usize);
            each(&mut self.buf[a..b], r, (from - r.offset) as usize)?;
            if r.offset + len > end {
                break;
            }
            self.next += 1;
        }
        Ok(&self.buf)
    }
}

/// Puts hash parts back into a rewritten file's bytes as they stream by, in order.
pub struct Substituter<'r>(Windows<'r>);

impl<'r> Substituter<'r> {
    /// A substituter for `rewrites`, sorted by offset and not overlapping (as a tree holds
    /// them).
    pub fn new(rewrites: &'r [Rewrite]) -> Self {
        Substituter(Windows::new(rewrites))
    }

    /// The real bytes of the next `chunk` of the blob.
    ///
    /// # Errors
    /// A message when a recorded position does not hold the placeholder: the blob is not
    /// the one the tree was made with.
    pub fn apply<'a>(&'a mut self, chunk: &'a [u8]) -> Result<&'a [u8], String> {
        self.0.apply(chunk, &mut |bytes, r, pa| {
            if bytes != &PLACEHOLDER[pa..pa + bytes.len()] {
                return Err(format!(
                    "no placeholder at byte {} where the tree records a reference",
                    r.offset
                ));
            }
            bytes.copy_from_slice(&r.hash_part[pa..pa + bytes.len()]);
            Ok(())
        })
    }
}

/// Puts the placeholder at the recorded offsets of a file's bytes as they stream by, in
/// order, whatever those bytes are: the blob a file would be stored as, were its references
/// at those offsets. A restore uses it on a file of an older build of the same package (its
/// own hash parts at the places where the file wanted has others) to tell whether it holds
/// the wanted file's blob (`restore::siblings`).
pub struct Masker<'r>(Windows<'r>);

impl<'r> Masker<'r> {
    /// A masker for the offsets of `rewrites`, sorted and not overlapping (as a tree holds
    /// them); their hash parts are not used.
    pub fn new(rewrites: &'r [Rewrite]) -> Self {
        Masker(Windows::new(rewrites))
    }

    /// The next `chunk` with the placeholder in place of the recorded windows.
    pub fn apply<'a>(&'a mut self, chunk: &'a [u8]) -> &'a [u8] {
        self.0
            .apply(chunk, &mut |bytes, _, pa| {
                bytes.copy_from_slice(&PLACEHOLDER[pa..pa + bytes.len()]);
                Ok(())
            })
            .expect("masking cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const B: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";

    fn parts(ps: &[&str]) -> HashParts {
        HashParts::new(ps.iter().copied())
    }

    fn streamed(data: &[u8], parts: &HashParts, cuts: &[usize]) -> (Vec<u8>, Vec<Rewrite>) {
        let mut out = Vec::new();
        let mut r = Rewriter::new(parts);
        let mut push = |b: &[u8]| -> Result<(), ()> {
            out.extend_from_slice(b);
            Ok(())
        };
        let mut at = 0;
        for &c in cuts {
            let c = c.min(data.len()).max(at);
            r.feed(&data[at..c], &mut push).unwrap();
            at = c;
        }
        r.feed(&data[at..], &mut push).unwrap();
        let found = r.finish(&mut push).unwrap();
        (out, found)
    }

    fn mask(data: &[u8], rewrites: &[Rewrite], cuts: &[usize]) -> Vec<u8> {
        let mut m = Masker::new(rewrites);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain([&data.len()]) {
            let c = c.min(data.len()).max(at);
            out.extend_from_slice(m.apply(&data[at..c]));
            at = c;
        }
        out
    }

    fn substitute(blob: &[u8], rewrites: &[Rewrite], cuts: &[usize]) -> Result<Vec<u8>, String> {
        let mut s = Substituter::new(rewrites);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain([&blob.len()]) {
            let c = c.min(blob.len()).max(at);
            out.extend_from_slice(s.apply(&blob[at..c])?);
            at = c;
        }
        Ok(out)
    }

    #[test]
    fn references_are_replaced_and_put_back() {
        let text = format!("#!/gnu/store/{A}-bash/bin/sh\nexec /gnu/store/{B}-x/bin/x {A}\n");
        let mut blob = text.clone().into_bytes();
        let rw = rewrite_in_place(&mut blob, &parts(&[A, B]));
        assert_eq!(rw.len(), 3);
        assert_eq!(rw[0].offset, 13);
        assert!(!blob.windows(32).any(|w| w == A.as_bytes()));
        assert_eq!(substitute(&blob, &rw, &[]).unwrap(), text.as_bytes());
        // Another reference in its place: the same blob.
        let other = "1111111111111111111111111111111a";
        let text2 = text.replace(A, other);
        let mut blob2 = text2.clone().into_bytes();
        rewrite_in_place(&mut blob2, &parts(&[other, B]));
        assert_eq!(blob, blob2);
    }

    #[test]
    fn a_literal_placeholder_round_trips() {
        let text = format!(
            "{}{A}{}",
            String::from_utf8(PLACEHOLDER.to_vec()).unwrap(),
            "e"
        );
        let mut blob = text.clone().into_bytes();
        let rw = rewrite_in_place(&mut blob, &parts(&[A]));
        assert_eq!(
            rw,
            vec![Rewrite {
                offset: 32,
                hash_part: A.as_bytes().try_into().unwrap()
            }]
        );
        assert_eq!(
            substitute(&blob, &rw, &[5, 40, 63]).unwrap(),
            text.as_bytes()
        );
    }

    #[test]
    fn a_damaged_blob_is_noticed() {
        let rw = [Rewrite {
            offset: 2,
            hash_part: *b"0123456789abcdfghijklmnpqrsvwxyz",
        }];
        let blob = vec![b'x'; 40];
        assert!(substitute(&blob, &rw, &[10])
            .unwrap_err()
            .contains("byte 2"));
    }

    fn arb_case() -> impl Strategy<Value = (Vec<u8>, Vec<String>, Vec<usize>)> {
        let part =
            proptest::collection::vec(proptest::sample::select(NIXBASE32_ALPHABET.to_vec()), 32)
                .prop_map(|v| String::from_utf8(v).unwrap());
        (
            proptest::collection::vec(part, 0..4),
            proptest::collection::vec(0usize..600, 0..8),
        )
            .prop_flat_map(|(ps, cuts)| {
                let piece = prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..20),
                    proptest::collection::vec(proptest::sample::select(b"01az-e/".to_vec()), 0..40),
                    Just(PLACEHOLDER.to_vec()),
                    proptest::sample::select(if ps.is_empty() {
                        vec![A.to_string()]
                    } else {
                        ps.clone()
                    })
                    .prop_map(String::into_bytes),
                ];
                let mut cuts = cuts.clone();
                cuts.sort_unstable();
                (
                    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat()),
                    Just(ps),
                    Just(cuts),
                )
            })
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(256))]
        #[test]
        fn rewrite_then_substitute_is_the_identity((data, ps, cuts) in arb_case()) {
            let parts = HashParts::new(ps.iter().map(String::as_str));
            let mut naive = data.clone();
            let want = naive_rewrite(&mut naive, &parts);
            let mut whole = data.clone();
            prop_assert_eq!(&rewrite_in_place(&mut whole, &parts), &want);
            prop_assert_eq!(&whole, &naive);
            let (blob, found) = streamed(&data, &parts, &cuts);
            prop_assert_eq!(&found, &want);
            prop_assert_eq!(&blob, &naive);
            let mut reader = RewritingReader::new(&data[..], &parts);
            reader.chunk = vec![0; 1 + cuts.first().copied().unwrap_or(7) % 50];
            let mut read = Vec::new();
            reader.read_to_end(&mut read).unwrap();
            prop_assert_eq!(&read, &naive);
            prop_assert_eq!(reader.rewrites(), &want[..]);
            prop_assert_eq!(&substitute(&blob, &found, &cuts).unwrap(), &data);
            // Masking the file gives its blob back, and so does masking a file that differs
            // from it at the recorded offsets only (another build's hash parts there).
            prop_assert_eq!(&mask(&data, &found, &cuts), &blob);
            let mut other = data.clone();
            for r in &found {
                let o = r.offset as usize;
                other[o..o + HASH_PART_LEN].copy_from_slice(B.as_bytes());
            }
            prop_assert_eq!(&mask(&other, &found, &cuts), &blob);
            for r in &found {
                prop_assert!(!ps.is_empty() && parts.get(&r.hash_part).is_some());
            }
            // With a limit of what the file holds, the same; below it, the rewriter says so,
            // records one more than the limit, and still passes every byte on.
            for limit in [want.len(), want.len().saturating_sub(1)] {
                let mut r = Rewriter::with_limit(&parts, limit);
                let mut out = Vec::new();
                let mut push = |b: &[u8]| -> Result<(), ()> {
                    out.extend_from_slice(b);
                    Ok(())
                };
                let mut at = 0;
                for &c in cuts.iter().chain([&data.len()]) {
                    let c = c.min(data.len()).max(at);
                    r.feed(&data[at..c], &mut push).unwrap();
                    at = c;
                }
                let over = r.too_many();
                let got = r.finish(&mut push).unwrap();
                prop_assert_eq!(out.len(), data.len());
                if limit == want.len() {
                    prop_assert!(!over);
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(&out, &naive);
                } else {
                    prop_assert!(over);
                    prop_assert_eq!(&got[..], &want[..=limit]);
                }
            }
        }
    }
}
