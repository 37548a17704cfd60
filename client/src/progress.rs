//! Progress display: one live bar per file in flight (name, bytes, rate, ETA) under an indicatif
//! `MultiProgress` on stderr, and a one-line summary at the end. Bars are hidden with
//! `--no-progress` or when stderr is not a terminal, but they still count, so the shell's `jobs`
//! can report the progress of transfers whose bars are not drawn.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of bars drawn together.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: MultiProgress,
    visible: bool,
    /// Every bar handed out, so totals can be read back (for `jobs`).
    bars: Arc<Mutex<Vec<(ProgressBar, u64)>>>,
}

/// Totals over the bars of a [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes on disk, including resumed parts.
    pub done: u64,
    /// Bytes of all files known so far.
    pub total: u64,
    /// Files not finished yet.
    pub active: usize,
    /// Files seen.
    pub files: usize,
    /// Bytes that were already on disk when their files started (resumed parts), so rates
    /// can count only what this run fetched.
    pub resumed: u64,
}

impl Progress {
    /// Bars on stderr if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Self {
        let visible = wanted && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            visible,
            bars: Arc::default(),
        }
    }

    /// Never draws.
    pub fn hidden() -> Self {
        Self::new(false)
    }

    pub fn is_visible(&self) -> bool {
        self.visible
    }

    /// A bar for one file of `total` bytes of which `done` are already on disk (a resume).
    pub fn file(&self, name: &str, total: u64, done: u64) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(file_style());
        bar.set_message(shorten(name, 32));
        bar.set_position(done);
        // Rate and ETA should describe this run, not count the resumed bytes as instant.
        bar.reset_elapsed();
        bar.reset_eta();
        let bar = if self.visible {
            self.multi.add(bar)
        } else {
            bar
        };
        if let Ok(mut bars) = self.bars.lock() {
            bars.push((bar.clone(), done));
        }
        bar
    }

    /// Every bar handed out so far (clones share state with the originals).
    pub fn bars(&self) -> Vec<ProgressBar> {
        self.bars
            .lock()
            .map(|b| b.iter().map(|(bar, _)| bar.clone()).collect())
            .unwrap_or_default()
    }

    /// A visible bar that follows `source` (a bar of a hidden `Progress`), for watching
    /// background transfers. Call [`Progress::sync`] to update it.
    pub fn mirror(&self, source: &ProgressBar, label: &str) -> ProgressBar {
        self.file(label, source.length().unwrap_or(0), source.position())
    }

    /// Copies `source`'s length and position to `mirror`.
    pub fn sync(source: &ProgressBar, mirror: &ProgressBar) {
        if let Some(len) = source.length() {
            mirror.set_length(len);
        }
        mirror.set_position(source.position());
    }

    /// Sums over every bar handed out so far.
    pub fn totals(&self) -> Totals {
        let Ok(bars) = self.bars.lock() else {
            return Totals::default();
        };
        let mut totals = Totals {
            files: bars.len(),
            ..Totals::default()
        };
        for (bar, resumed) in bars.iter() {
            totals.resumed += resumed;
            totals.done += bar.position();
            totals.total += bar.length().unwrap_or(0);
            if !bar.is_finished() {
                totals.active += 1;
            }
        }
        totals
    }

    /// Prints a line above the bars (or plainly when they are hidden), to stderr.
    pub fn println(&self, line: &str) {
        if self.visible {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Runs `f` with the bars cleared, for output that must not be torn by a redraw.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

pub(crate) fn file_style() -> ProgressStyle {
    // The template is a constant, checked by the unit test below.
    ProgressStyle::with_template(
        "{msg:32} {bar:24.cyan/blue} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Keeps the end of long names, which is the part that tells files apart.
pub fn shorten(name: &str, max: usize) -> String {
    let count = name.chars().count();
    if count <= max {
        return name.to_string();
    }
    let tail: String = name.chars().skip(count - (max - 1)).collect();
    format!("…{tail}")
}

/// `10.0 MiB in 1.2s (8.3 MiB/s)`.
pub fn summary(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        bytes
    };
    format!(
        "{} in {} ({}/s)",
        HumanBytes(bytes),
        format_duration(elapsed),
        HumanBytes(rate)
    )
}

/// `850ms`, `1.2s`, `3m05s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses() {
        ProgressStyle::with_template(
            "{msg:32} {bar:24.cyan/blue} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:>4}",
        )
        .unwrap();
    }

    #[test]
    fn summaries_read_well() {
        assert_eq!(
            summary(10 * 1024 * 1024, Duration::from_secs(2)),
            "10.00 MiB in 2.0s (5.00 MiB/s)"
        );
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(shorten("abcdef", 4), "…def");
        assert_eq!(shorten("abc", 4), "abc");
    }

    #[test]
    fn hidden_bars_still_count() {
        let progress = Progress::hidden();
        let bar = progress.file("x", 100, 40);
        bar.inc(10);
        assert_eq!(bar.position(), 50);
        assert!(!progress.is_visible());
        let totals = progress.totals();
        assert_eq!((totals.done, totals.total, totals.active), (50, 100, 1));
        bar.finish_and_clear();
        assert_eq!(progress.totals().active, 0);
    }
}
