//! Scale benchmark: storesync's commands on generated stores of 1,000 to 100,000 small paths
//! (see `gen.rs`), with one snapshot in the cache and then with 20. Not a timed test: run it
//! by hand; it prints a Markdown table (wall time, CPU time, peak RSS, per-path CPU costs, and
//! the ratio of the per-path cost at the largest size to that at the smallest).
//!
//! ```text
//! cargo bench --bench scale                                  # 1,000, 10,000, 100,000 paths
//! STORESYNC_SCALE_SIZES=1000,10000 cargo bench --bench scale # quicker
//! cargo bench --bench scale -- gen DIR PATHS [GENERATION]    # only make (or advance) a store
//! ```
//!
//! Environment:
//! * `STORESYNC_SCALE_DIR`       work directory [/var/tmp/storesync-scale]; stores are kept in
//!   `store-<N>/` and reused (advanced in place from generation to generation);
//! * `STORESYNC_SCALE_SIZES`     path counts, comma-separated [1000,10000,100000];
//! * `STORESYNC_SCALE_SNAPSHOTS` snapshots in the cache for the second half [20];
//! * `STORESYNC_SCALE_RUNS`      runs of the commands that change nothing (no-op save and
//!   restore, verify, gc keeping everything, ls, diff); the median is reported [3];
//! * `STORESYNC_BIN`             the binary to measure [the one cargo built with this bench].
//!
//! Every timed run is preceded by `sync`; runs are warm-cache. Wall time is the process's;
//! CPU time (user + system) and peak RSS are its `ru_utime`, `ru_stime` and `ru_maxrss` from
//! `wait4`. Per-path costs use CPU time, which other processes on the machine disturb less.

mod gen;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: f64,
    /// User + system CPU seconds: steadier than wall time on a loaded machine.
    cpu: f64,
    rss_kb: u64,
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("scale bench: {msg}");
    std::process::exit(1)
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Run `bin` with `args`; its wall time, CPU time and peak RSS. Dies when it fails.
fn run(bin: &Path, args: &[&str]) -> Sample {
    let t0 = Instant::now();
    let mut c = Command::new(bin);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let desc = format!("{c:?}");
    // Reaped below by wait4, which also reads the child's rusage.
    #[allow(clippy::zombie_processes)]
    let mut child = c.spawn().unwrap_or_else(|e| die(format!("{desc}: {e}")));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let mut status = 0;
    // SAFETY: plain FFI call on a child we spawned and have not waited for.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        die(format!("wait4 {desc}: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        die(format!("{desc} failed (status {status:#x}): {err}"));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Sample {
        wall: t0.elapsed().as_secs_f64(),
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kb: ru.ru_maxrss as u64,
    }
}

fn sync() {
    let st = Command::new("sync").status();
    if !st.is_ok_and(|s| s.success()) {
        die("sync failed");
    }
}

fn rm_rf(p: &Path) {
    if fs::symlink_metadata(p).is_ok() {
        fs::remove_dir_all(p).unwrap_or_else(|e| die(format!("rm -rf {}: {e}", p.display())));
    }
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let rss = v.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let mut cpu: Vec<f64> = v.iter().map(|s| s.cpu).collect();
    cpu.sort_by(f64::total_cmp);
    Sample {
        wall: v[v.len() / 2].wall,
        cpu: cpu[cpu.len() / 2],
        rss_kb: rss,
    }
}

struct Bench {
    bin: PathBuf,
    runs: usize,
    /// (row, paths) -> sample
    results: BTreeMap<(usize, usize), Sample>,
    rows: Vec<String>,
}

impl Bench {
    fn row(&mut self, name: &str) -> usize {
        match self.rows.iter().position(|r| r == name) {
            Some(i) => i,
            None => {
                self.rows.push(name.to_owned());
                self.rows.len() - 1
            }
        }
    }

    /// Time `args` once (or `runs` times when `repeat`), record it under `name`.
    fn time(&mut self, name: &str, n: usize, args: &[&str], repeat: bool) -> Sample {
        let runs = if repeat { self.runs } else { 1 };
        let samples: Vec<Sample> = (0..runs)
            .map(|_| {
                sync();
                run(&self.bin, args)
            })
            .collect();
        let s = median(samples);
        eprintln!(
            "  {n:>7} paths  {name:<32} {:>8.2} s {:>7.2} s CPU {:>7.1} MB",
            s.wall,
            s.cpu,
            s.rss_kb as f64 / 1024.0
        );
        let r = self.row(name);
        self.results.insert((r, n), s);
        s
    }
}

fn str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| die(format!("{} is not UTF-8", p.display())))
}

fn newest_and_oldest(bin: &Path, cache: &str) -> (String, String) {
    let out = Command::new(bin)
        .args(["--json", "ls", "--cache", cache])
        .output()
        .unwrap_or_else(|e| die(format!("ls: {e}")));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| die(format!("ls --json: {e}")));
    let ids: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| die("ls --json: not an array"))
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    match (ids.first(), ids.last()) {
        (Some(o), Some(n)) => (n.clone(), o.clone()),
        _ => die("ls: no snapshot"),
    }
}

/// Make the store in a child process: a child's peak RSS as `wait4` reports it includes its
/// parent's at the time it was spawned (Linux records the old address space's high-water mark
/// at `exec`), so this process must stay small.
fn generate(store: &Path, n: usize, g: u32) {
    let me = std::env::current_exe().unwrap_or_else(|e| die(e));
    let st = Command::new(me)
        .args(["gen", str(store), &n.to_string(), &g.to_string()])
        .status();
    if !st.is_ok_and(|s| s.success()) {
        die(format!("generating {} failed", store.display()));
    }
}

fn bench_size(b: &mut Bench, work: &Path, n: usize, snapshots: u32) {
    let store = work.join(format!("store-{n}"));
    let cache = work.join(format!("cache-{n}"));
    let target = work.join(format!("target-{n}"));
    generate(&store, n, 0);
    rm_rf(&cache);
    rm_rf(&target);
    let (s, c, t) = (str(&store), str(&cache), str(&target));
    let save = [
        "--root",
        s,
        "save",
        "--cache",
        c,
        "--key",
        "scale",
        "--no-progress",
    ];
    let restore = ["--root", t, "restore", "--cache", c, "--no-progress"];
    b.time("save, full", n, &save, false);
    b.time("save, no-op", n, &save, true);
    b.time("restore, cold", n, &restore, false);
    b.time("restore, no-op", n, &restore, true);
    b.time("verify", n, &["verify", "--cache", c], true);
    // Marking and publishing; defragmenting is measured apart below.
    let keep_all = ["--keep-last", "100", "--defragment", "never"];
    b.time(
        "gc, keeping all",
        n,
        &[&["gc", "--cache", c][..], &keep_all].concat(),
        true,
    );
    b.time("ls", n, &["ls", "--cache", c], true);
    b.time(
        "diff, snapshot vs live",
        n,
        &["--root", s, "diff", "--cache", c, "key:scale"],
        true,
    );
    // More snapshots: each generation upgrades ~3% of the paths.
    let mut changing = Vec::new();
    for g in 1..snapshots {
        generate(&store, n, g);
        sync();
        changing.push(run(&b.bin, &save));
    }
    if !changing.is_empty() {
        let s = median(changing);
        let name = "save, 3% changed (median)";
        let r = b.row(name);
        b.results.insert((r, n), s);
        eprintln!(
            "  {n:>7} paths  {name:<32} {:>8.2} s {:>7.2} s CPU {:>7.1} MB",
            s.wall,
            s.cpu,
            s.rss_kb as f64 / 1024.0
        );
    }
    let k = snapshots;
    let (newest, oldest) = newest_and_oldest(&b.bin, c);
    b.time(&format!("{k} snaps: save, no-op"), n, &save, true);
    rm_rf(&target);
    b.time(&format!("{k} snaps: restore, cold"), n, &restore, false);
    b.time(&format!("{k} snaps: restore, no-op"), n, &restore, true);
    b.time(
        &format!("{k} snaps: verify"),
        n,
        &["verify", "--cache", c],
        true,
    );
    b.time(
        &format!("{k} snaps: gc, keeping all"),
        n,
        &[&["gc", "--cache", c][..], &keep_all].concat(),
        true,
    );
    b.time(&format!("{k} snaps: ls"), n, &["ls", "--cache", c], true);
    b.time(
        &format!("{k} snaps: diff, oldest vs newest"),
        n,
        &["diff", "--cache", c, &oldest, &newest],
        true,
    );
    // On copies (hard links: gc never modifies a file), so the cache of 20 snapshots stays
    // for profiling. The newest snapshot restored from the cache left with it alone (its
    // objects where 20 saves put them), then from all 20 defragmented.
    let copy = work.join(format!("cache-{n}-gc"));
    let copy_of = |copy: &Path| {
        rm_rf(copy);
        let st = Command::new("cp").args(["-al", c, str(copy)]).status();
        if !st.is_ok_and(|s| s.success()) {
            die(format!("cp -al {c} {}", copy.display()));
        }
    };
    let restore_copy = [
        "--root",
        t,
        "restore",
        "--cache",
        str(&copy),
        "--no-progress",
    ];
    copy_of(&copy);
    b.time(
        &format!("{k} snaps: gc --keep-last 1"),
        n,
        &[
            "gc",
            "--cache",
            str(&copy),
            "--keep-last",
            "1",
            "--defragment",
            "never",
        ],
        false,
    );
    rm_rf(&target);
    b.time(
        &format!("{k} snaps, newest kept: restore, cold"),
        n,
        &restore_copy,
        false,
    );
    copy_of(&copy);
    b.time(
        &format!("{k} snaps: gc, defragmenting"),
        n,
        &[
            &["gc", "--cache", str(&copy)][..],
            &keep_all[..2],
            &["--defragment", "always"],
        ]
        .concat(),
        false,
    );
    rm_rf(&target);
    b.time(
        &format!("{k} snaps, defragmented: restore, cold"),
        n,
        &restore_copy,
        false,
    );
    rm_rf(&copy);
    rm_rf(&target);
}

fn table(b: &Bench, sizes: &[usize]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let (lo, hi) = (sizes[0], sizes[sizes.len() - 1]);
    let _ = write!(o, "| command |");
    for n in sizes {
        let _ = write!(o, " {n} paths: wall s / CPU s / MB |");
    }
    let _ = writeln!(
        o,
        " CPU µs per path at {lo} / {hi} | ratio | RSS growth, bytes per path |"
    );
    let _ = write!(o, "|---|");
    for _ in sizes {
        let _ = write!(o, "---|");
    }
    let _ = writeln!(o, "---|---|---|");
    for (r, name) in b.rows.iter().enumerate() {
        let _ = write!(o, "| {name} |");
        for &n in sizes {
            match b.results.get(&(r, n)) {
                Some(s) => {
                    let mb = s.rss_kb as f64 / 1024.0;
                    let _ = write!(o, " {:.2} / {:.2} / {mb:.0} |", s.wall, s.cpu);
                }
                None => {
                    let _ = write!(o, " - |");
                }
            }
        }
        match (b.results.get(&(r, lo)), b.results.get(&(r, hi))) {
            (Some(a), Some(z)) if hi > lo => {
                let (pa, pz) = (a.cpu / lo as f64 * 1e6, z.cpu / hi as f64 * 1e6);
                let growth = (z.rss_kb as f64 - a.rss_kb as f64) * 1024.0 / (hi - lo) as f64;
                let _ = writeln!(o, " {pa:.1} / {pz:.1} | {:.2} | {growth:.0} |", pz / pa);
            }
            _ => {
                let _ = writeln!(o, " - | - | - |");
            }
        }
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("gen") {
        let dir = args
            .get(1)
            .unwrap_or_else(|| die("gen DIR PATHS [GENERATION]"));
        let n: usize = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| die("gen DIR PATHS [GENERATION]: PATHS must be a number"));
        let g: u32 = args.get(3).map_or(0, |s| {
            s.parse()
                .unwrap_or_else(|_| die("GENERATION must be a number"))
        });
        let st = gen::ensure(Path::new(dir), n, g).unwrap_or_else(|e| die(e));
        let changed = if g > 0 { gen::changed_in(n, g) } else { 0 };
        eprintln!("{dir}: {n} paths, generation {g} ({changed} paths changed from the last): {st}");
        return;
    }
    let work =
        PathBuf::from(env("STORESYNC_SCALE_DIR").unwrap_or("/var/tmp/storesync-scale".into()));
    let sizes: Vec<usize> = env("STORESYNC_SCALE_SIZES")
        .unwrap_or("1000,10000,100000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| die(format!("bad size {s}")))
        })
        .collect();
    let snapshots: u32 = env("STORESYNC_SCALE_SNAPSHOTS").map_or(20, |s| {
        s.parse()
            .unwrap_or_else(|_| die("STORESYNC_SCALE_SNAPSHOTS"))
    });
    let runs: usize = env("STORESYNC_SCALE_RUNS").map_or(3, |s| {
        s.parse().unwrap_or_else(|_| die("STORESYNC_SCALE_RUNS"))
    });
    let bin = env("STORESYNC_BIN").map(PathBuf::from).unwrap_or_else(|| {
        // target/release/deps/scale-HASH -> target/release/storesync
        let me = std::env::current_exe().unwrap_or_else(|e| die(e));
        me.parent()
            .and_then(Path::parent)
            .map(|d| d.join("storesync"))
            .unwrap_or_else(|| die("cannot find the storesync binary; set STORESYNC_BIN"))
    });
    if !bin.exists() {
        die(format!(
            "{} does not exist: cargo build --release, or set STORESYNC_BIN",
            bin.display()
        ));
    }
    fs::create_dir_all(&work).unwrap_or_else(|e| die(format!("{}: {e}", work.display())));
    let mut b = Bench {
        bin,
        runs: runs.max(1),
        results: BTreeMap::new(),
        rows: Vec::new(),
    };
    for &n in &sizes {
        bench_size(&mut b, &work, n, snapshots.max(1));
    }
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("{}", table(&b, &sizes));
    println!("load average at the end: {}", load.trim());
}
