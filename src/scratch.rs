//! Per-thread scratch buffers. A buffer allocated for each file read or frame decompressed is
//! fresh memory every time (the allocator hands freed pages back to the kernel), and the
//! kernel zeroes every page of it on first touch: 8% of a warm restore's samples. Borrowing one
//! buffer per thread instead avoids both.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A buffer borrowed from this thread's spare; goes back when dropped (the larger of the two
/// is kept). A nested borrow while one is out gets a new buffer, never the same one.
pub struct Scratch(Vec<u8>);

impl Scratch {
    /// At least `len` bytes long (contents unspecified).
    pub fn with_len(len: usize) -> Self {
        let mut v = SPARE.with(Cell::take);
        if v.len() < len {
            v.resize(len, 0);
        }
        Scratch(v)
    }

    /// Empty, with the capacity the spare had.
    pub fn empty() -> Self {
        let mut v = SPARE.with(Cell::take);
        v.clear();
        Scratch(v)
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
        // At thread exit the slot may be gone: then the buffer is simply freed.
        let _ = SPARE.try_with(|s| {
            let old = s.take();
            s.set(if old.capacity() > v.capacity() {
                old
            } else {
                v
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Scratch;

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
}
