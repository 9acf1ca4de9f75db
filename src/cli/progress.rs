//! indicatif progress bars on stderr, behind the library's `Progress` trait.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use storesync::progress::Progress;

pub struct Bars {
    enabled: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(enabled: bool) -> Self {
        Bars {
            enabled: enabled && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            bar: Mutex::new(None),
        }
    }
}

impl Bars {
    fn begin(&self, phase: &str, total: u64, template: &str) {
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(phase.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.lock().expect("bar") = Some(bar);
    }
}

impl Progress for Bars {
    fn start(&self, phase: &str, total: u64) {
        self.begin(phase, total, "{msg:20} [{bar:30}] {percent:>3}% {elapsed}");
    }
    fn start_bytes(&self, phase: &str, total: u64) {
        self.begin(
            phase,
            total,
            "{msg:20} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}",
        );
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().expect("bar") {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("bar").take() {
            b.finish_and_clear();
        }
    }
    fn note(&self, msg: &str) {
        match &*self.bar.lock().expect("bar") {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}
