//! Per-thread scratch buffers. A buffer allocated for each file read or frame decompressed is
//! fresh memory every time (the allocator hands freed pages back to the kernel), and the
//! kernel zeroes every page of it on first touch: 8% of a warm restore's samples. Borrowing one
//! buffer per thread instead avoids both.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps: enough for the borrows that nest (a file read whole while its
/// frames are compressed and a large object streamed: measured at 10 ms purge delay, a save
/// of 200 MiB faulted in twice the pages with one spare than with none freed).
const SPARES: usize = 4;

/// Larger buffers go back to the allocator.
const MAX_KEPT: usize = 16 << 20;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Let go of the spares of this thread and of every thread of rayon's pool: for a command
/// whose borrowing is over (a save's walk), so that what follows does not hold them (up to
/// [`SPARES`] buffers of up to [`MAX_KEPT`] bytes a thread).
pub fn release_spares() {
    let release = || {
        let _ = SPARE.try_with(|s| s.borrow_mut().clear());
    };
    rayon::broadcast(|_| release());
    release();
}

/// The spare of the smallest capacity of at least `want`, else the largest, else a new one.
fn take(want: usize) -> Vec<u8> {
    if want > MAX_KEPT && want != usize::MAX {
        // Would not come back: the spares stay for the next borrows.
        return Vec::new();
    }
    SPARE
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let fit = s
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= want)
                .min_by_key(|(_, v)| v.capacity())
                .or_else(|| s.iter().enumerate().max_by_key(|(_, v)| v.capacity()))
                .map(|(i, _)| i);
            fit.map(|i| s.swap_remove(i)).unwrap_or_default()
        })
        .unwrap_or_default()
}

/// A buffer borrowed from this thread's spares; goes back to the spares of the thread that
/// drops it (the smallest one is let go when there are more than [`SPARES`]). A nested borrow
/// while one is out gets another buffer, never the same one.
pub struct Scratch(Vec<u8>);

impl Scratch {
    /// At least `len` bytes long (contents unspecified).
    pub fn with_len(len: usize) -> Self {
        let mut v = take(len);
        if v.len() < len {
            v.resize(len, 0);
        }
        Scratch(v)
    }

    /// Empty, with a capacity of at least `capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut v = take(capacity);
        v.clear();
        v.reserve(capacity);
        Scratch(v)
    }

    /// Empty, with the capacity of the largest spare.
    pub fn empty() -> Self {
        let mut v = take(usize::MAX);
        v.clear();
        Scratch(v)
    }
}

/// No buffer: nothing borrowed until one is asked for.
impl Default for Scratch {
    fn default() -> Self {
        Scratch(Vec::new())
    }
}

impl Deref for Scratch {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 || v.capacity() > MAX_KEPT {
            return;
        }
        // At thread exit the slot may be gone: then the buffer is simply freed.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            s.push(v);
            if s.len() > SPARES {
                let smallest = (0..s.len())
                    .min_by_key(|&i| s[i].capacity())
                    .expect("not empty");
                s.swap_remove(smallest);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Scratch;

    #[test]
    fn released_spares_are_not_handed_out_again() {
        let a = Scratch::with_len(1000);
        let p = a.as_ptr();
        drop(a);
        super::release_spares();
        let b = Scratch::with_capacity(10);
        assert_ne!(b.as_ptr(), p, "a fresh buffer");
        assert!(b.capacity() < 1000);
    }

    #[test]
    fn buffers_are_reused_and_never_shared() {
        let a = Scratch::with_len(1000);
        let p = a.as_ptr();
        let b = Scratch::with_len(10); // nested: a different buffer
        assert_ne!(b.as_ptr(), p);
        drop(b);
        drop(a);
        let c = Scratch::with_len(500);
        assert_eq!(c.as_ptr(), p, "the larger buffer is kept");
        assert!(c.len() >= 1000);
        drop(c);
        let d = Scratch::empty();
        assert!(d.is_empty() && d.capacity() >= 1000);
    }

    #[test]
    fn nested_borrows_all_come_back_up_to_the_bound() {
        // On a thread of its own: the spares are per thread.
        std::thread::spawn(|| {
            let held: Vec<Scratch> = (1..=super::SPARES + 2)
                .map(|i| Scratch::with_capacity(i * 1000))
                .collect();
            let ptrs: Vec<_> = held.iter().map(|b| b.as_ptr()).collect();
            drop(held);
            // The largest SPARES were kept; each is handed out once, best fit first.
            let again: Vec<Scratch> = (0..super::SPARES + 2)
                .map(|_| Scratch::with_capacity(1))
                .collect();
            let reused = again.iter().filter(|b| ptrs.contains(&b.as_ptr())).count();
            assert_eq!(reused, super::SPARES);
            let first = &again[0];
            assert_eq!(first.capacity(), 3000, "the smallest kept that fits");
            drop(again);
            // A buffer over the bound is not kept.
            drop(Scratch::with_capacity(super::MAX_KEPT + 1));
            let kept: Vec<usize> =
                super::SPARE.with(|s| s.borrow().iter().map(Vec::capacity).collect());
            assert_eq!(kept.len(), super::SPARES);
            assert!(kept.iter().all(|&c| c <= super::MAX_KEPT), "{kept:?}");
        })
        .join()
        .unwrap();
    }
}
