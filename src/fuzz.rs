//! How long the property tests of the decoders run: `STORESYNC_FUZZ_SCALE=N` multiplies every
//! case count (`just fuzz` runs them a hundred times longer; CI a few times). A failing input
//! is shrunk and saved by proptest under `proptest-regressions/`, and replayed first by every
//! later run: commit those files, they are the regression tests.

use proptest::test_runner::Config;

/// A proptest configuration with `cases` times the scale.
pub fn config(cases: u32) -> Config {
    let scale = std::env::var("STORESYNC_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    Config::with_cases(cases.saturating_mul(scale))
}
