//! The CLI's reporter: a spinner naming the running step and a bar for
//! downloads on a terminal; plain lines on stderr otherwise; nothing with
//! `-q` or `--json` (but errors).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::plan::Step;

pub struct Progress {
    spinner: Option<ProgressBar>,
    download: Mutex<Option<ProgressBar>>,
    quiet: bool,
    tty: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let tty = !quiet && std::io::stderr().is_terminal();
        let spinner = tty.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress {
            spinner,
            download: Mutex::new(None),
            quiet,
            tty,
        }
    }

    /// Clear what is drawn.
    pub fn finish(&self) {
        if let Some(b) = &self.spinner {
            b.finish_and_clear();
        }
        self.download_done_inner();
    }

    fn line(&self, line: String) {
        match &self.spinner {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn download_done_inner(&self) {
        if let Some(b) = self.download.lock().expect("lock").take() {
            b.finish_and_clear();
        }
    }
}

impl crate::report::Reporter for Progress {
    fn step_started(&self, step: &Step) {
        if let Some(b) = &self.spinner {
            b.set_message(format!("{} {}", step.label, step.key.short()));
        }
    }
    fn step_done(&self, step: &Step, cached: bool, seconds: f64) {
        if self.quiet {
            return;
        }
        self.line(if cached {
            format!("  {:<20} {}  cached", step.label, step.key.short())
        } else {
            format!(
                "  {:<20} {}  built in {seconds:.1}s",
                step.label,
                step.key.short()
            )
        });
    }
    fn step_substituted(&self, step: &Step, url: &str, bytes: u64, seconds: f64) {
        if !self.quiet {
            self.line(format!(
                "  {:<20} {}  substituted from {url} in {seconds:.1}s ({:.1} MiB)",
                step.label,
                step.key.short(),
                bytes as f64 / (1 << 20) as f64
            ));
        }
    }
    fn note(&self, text: &str) {
        if !self.quiet {
            self.line(text.to_string());
        }
    }
    fn download_started(&self, what: &str, bytes: u64) {
        if self.quiet {
            return;
        }
        if !self.tty {
            eprintln!(
                "  downloading {what} ({:.1} MiB)",
                bytes as f64 / (1 << 20) as f64
            );
            return;
        }
        let b = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b.set_message(what.to_string());
        *self.download.lock().expect("lock") = Some(b);
    }
    fn downloaded(&self, bytes: u64) {
        if let Some(b) = &*self.download.lock().expect("lock") {
            b.inc(bytes);
        }
    }
    fn download_done(&self) {
        self.download_done_inner();
    }
}
