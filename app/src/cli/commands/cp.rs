//! `corral cp`: one progress bar for the whole copy (files and bytes), shown
//! on a terminal after a second, and the summary line.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral::transfer::{CopyOptions, Location, Progress};
use corral::{UserSandbox, human_size};

use crate::cli::output::{Out, Outcome};

/// The bar: hidden until the copy has taken a second, and never off a terminal.
struct Bar {
    bar: indicatif::ProgressBar,
    started: Instant,
    shown: AtomicBool,
    terminal: bool,
    files: AtomicU64,
    done: AtomicU64,
}

impl Bar {
    fn new() -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>13} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        Self {
            bar,
            started: Instant::now(),
            shown: AtomicBool::new(false),
            terminal: std::io::stderr().is_terminal(),
            files: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn message(&self) {
        let (done, files) = (
            self.done.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
        );
        self.bar.set_message(format!("{done}/{files} files"));
    }
}

impl Progress for Bar {
    fn planned(&self, files: u64, bytes: u64) {
        self.files.store(files, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.message();
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        if self.terminal
            && self.started.elapsed() > Duration::from_secs(1)
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    fn file_done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.message();
    }

    #[allow(clippy::print_stderr)] // What the user should know, on stderr.
    fn notice(&self, message: &str) {
        self.bar.suspend(|| eprintln!("corral: {message}"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[allow(clippy::print_stderr)] // The summary line goes to stderr.
pub(crate) async fn run(
    sb: &UserSandbox,
    out: &mut Out,
    mut paths: Vec<Location>,
    options: &CopyOptions,
    json: bool,
) -> Outcome {
    let dst = match paths.pop() {
        Some(d) => d,
        None => Location::sandbox("/")?,
    };
    let summary = {
        let bar = Bar::new();
        sb.copy_paths(&paths, &dst, options, &bar).await?
    };
    if json {
        return out.json(&summary);
    }
    if summary.files > 0 && std::io::stderr().is_terminal() {
        eprintln!(
            "corral: copied {} file(s), {} in {:.1} s ({}/s)",
            summary.files,
            human_size(summary.bytes),
            summary.seconds,
            human_size((summary.bytes as f64 / summary.seconds.max(1e-3)) as u64)
        );
    }
    Ok(())
}
