//! Progress reporting, kept out of the core: the library calls a [`Progress`] and the CLI
//! implements it with bars on stderr. [`NoProgress`] ignores everything.

/// Receives progress events. Implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    /// A phase starts, with `total` units (paths or bytes) when known.
    fn start(&self, _phase: &str, _total: u64) {}
    /// A phase counted in bytes starts (shown with a rate and the time left).
    fn start_bytes(&self, phase: &str, total: u64) {
        self.start(phase, total);
    }
    /// `n` more units done in the current phase.
    fn advance(&self, _n: u64) {}
    /// The current phase is over.
    fn finish(&self) {}
    /// A message worth showing now (a skipped path, a warning).
    fn note(&self, _msg: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
