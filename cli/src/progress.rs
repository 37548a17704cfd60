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

    /// Bars drawn on `target` (tests draw on an in-memory terminal).
    pub fn with_target(target: ProgressDrawTarget) -> Self {
        let visible = !target.is_hidden();
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

    /// A bar for a whole transfer of `total` bytes (it may grow), below the files' bars, with
    /// their rate and ETA. It is not one of [`Progress::bars`], so totals do not count it twice.
    pub fn overall(&self, label: &str, total: u64) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(file_style());
        bar.set_message(shorten(label, 32));
        if self.visible {
            self.multi.add(bar)
        } else {
            bar
        }
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

    /// Takes every bar off the screen, finished or abandoned, so nothing is left behind when a
    /// transfer stops early (Ctrl-C, an error).
    pub fn clear(&self) {
        for bar in self.bars() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }

    /// Runs `f` with the bars cleared, for output that must not be torn by a redraw.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

/// The bar's line. `{eta}` is ours ([`format_eta`]): indicatif's own rounds to coarse units.
const TEMPLATE: &str =
    "{msg:32} {bar:24.cyan/blue} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:>7}";

pub(crate) fn file_style() -> ProgressStyle {
    // The template is a constant, checked by the unit test below.
    ferry_common::progress::style(TEMPLATE).with_key(
        "eta",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let remaining = state.len().unwrap_or(0).saturating_sub(state.pos());
            let _ = w.write_str(&format_eta(state.eta(), remaining));
        },
    )
}

/// The library's transfers draw through these bars.
impl ferry_client::TransferProgress for Progress {
    fn file(&self, name: &str, total: u64, done: u64) -> Box<dyn ferry_client::FileProgress> {
        Box::new(FileBar(Progress::file(self, name, total, done)))
    }

    fn println(&self, line: &str) {
        Progress::println(self, line)
    }
}

/// One file's bar, as the library sees it.
#[derive(Debug)]
struct FileBar(ProgressBar);

impl ferry_client::FileProgress for FileBar {
    fn inc(&self, bytes: u64) {
        self.0.inc(bytes)
    }

    fn finish(&self) {
        self.0.finish_and_clear()
    }

    fn abandon(&self) {
        self.0.abandon()
    }
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

/// An ETA a person reads at a glance: whole seconds rounded up, so a transfer that is not done
/// never shows `0s`; `-` while no rate is known. `3s`, `1m 05s`, `2h 07m`.
pub fn format_eta(eta: Duration, remaining: u64) -> String {
    if remaining == 0 {
        return "0s".into();
    }
    if eta.is_zero() {
        return "-".into();
    }
    let secs = eta.as_secs() + u64::from(eta.subsec_nanos() > 0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
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
        ProgressStyle::with_template(TEMPLATE).unwrap();
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

    /// A terminal that keeps only what is on screen: enough of one to see what a bar leaves.
    #[derive(Debug, Default, Clone)]
    struct Screen(Arc<Mutex<(Vec<String>, usize)>>);

    impl Screen {
        fn text(&self) -> String {
            self.0.lock().unwrap().0.join("\n")
        }
        fn with<R>(&self, f: impl FnOnce(&mut Vec<String>, &mut usize) -> R) -> R {
            let mut guard = self.0.lock().unwrap();
            let (lines, row) = &mut *guard;
            while lines.len() <= *row {
                lines.push(String::new());
            }
            f(lines, row)
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.with(|_, row| *row = row.saturating_sub(n));
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.with(|_, row| *row += n);
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.with(|lines, row| {
                lines[*row].push_str(s);
                *row += 1;
            });
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.with(|lines, row| lines[*row].push_str(s));
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.with(|lines, row| lines[*row].clear());
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Ctrl-C abandons the bars of the transfers it stops; clearing takes them off the screen.
    #[test]
    fn clear_leaves_no_bar_behind() {
        let screen = Screen::default();
        let progress =
            Progress::with_target(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let a = progress.file("a.bin", 1000, 0);
        let b = progress.file("b.bin", 1000, 0);
        a.set_position(400);
        b.set_position(300);
        a.abandon();
        b.abandon();
        assert!(screen.text().contains("a.bin"), "{}", screen.text());
        progress.clear();
        assert!(!screen.text().contains(".bin"), "{:?}", screen.text());
        // A line printed afterwards is the only thing left.
        progress.println("partial download kept");
        assert_eq!(screen.text().trim(), "partial download kept");
    }

    #[test]
    fn eta_is_whole_seconds_and_never_zero_mid_transfer() {
        assert_eq!(format_eta(Duration::from_millis(200), 10), "1s");
        assert_eq!(format_eta(Duration::ZERO, 10), "-");
        assert_eq!(format_eta(Duration::ZERO, 0), "0s");
        assert_eq!(format_eta(Duration::from_millis(2100), 10), "3s");
        assert_eq!(format_eta(Duration::from_secs(59), 10), "59s");
        assert_eq!(format_eta(Duration::from_secs(65), 10), "1m 05s");
        assert_eq!(format_eta(Duration::from_millis(3_599_500), 10), "1h 00m");
        assert_eq!(
            format_eta(Duration::from_secs(3 * 3600 + 7 * 60), 10),
            "3h 07m"
        );
    }

    /// What a bar shows mid-transfer: the ETA in the form above, whatever the rate is.
    #[test]
    fn bar_shows_the_rounded_eta() {
        let screen = Screen::default();
        let progress =
            Progress::with_target(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let bar = progress.file("c.bin", 1 << 30, 0);
        bar.set_position(1 << 20);
        bar.tick();
        let text = screen.text();
        let eta = text.rsplit("ETA ").next().unwrap_or_default().trim();
        assert!(
            eta == "-" || eta.ends_with('s') && !eta.ends_with("ms") && !eta.starts_with("0"),
            "{text:?}"
        );
    }

    /// The overall bar draws with the files' bars and stays out of their totals.
    #[test]
    fn the_overall_bar_shows_with_the_files_and_counts_once() {
        let screen = Screen::default();
        let progress =
            Progress::with_target(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let total = progress.overall("total (2 files)", 3000);
        let a = progress.file("a.bin", 1000, 0);
        a.set_position(500);
        total.set_position(500);
        total.tick();
        let text = screen.text();
        assert!(
            text.contains("a.bin") && text.contains("total (2 files)"),
            "{text}"
        );
        assert!(text.contains("ETA"), "{text}");
        assert_eq!(progress.totals().total, 1000);
        progress.clear();
        total.finish_and_clear();
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
