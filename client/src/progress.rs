//! How transfers report progress without knowing how it is shown: the `ferry` command draws
//! bars (indicatif), the p2p node and the benchmarks show nothing, a GUI could draw its own.

/// Receives one [`FileProgress`] per file a transfer starts, and notes to show beside them.
pub trait TransferProgress: Send + Sync {
    /// A file of `total` bytes starts, `done` of them already on disk (a resume).
    fn file(&self, name: &str, total: u64, done: u64) -> Box<dyn FileProgress>;
    /// A line to show without tearing the display (a skipped file, a warning).
    fn println(&self, line: &str);
}

/// The progress of one file.
pub trait FileProgress: Send + Sync {
    /// `bytes` more arrived.
    fn inc(&self, bytes: u64);
    /// The file is complete: its display can go.
    fn finish(&self);
    /// The file stopped unfinished: its display stays as it was.
    fn abandon(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl TransferProgress for NoProgress {
    fn file(&self, _name: &str, _total: u64, _done: u64) -> Box<dyn FileProgress> {
        Box::new(NoProgress)
    }

    fn println(&self, _line: &str) {}
}

impl FileProgress for NoProgress {
    fn inc(&self, _bytes: u64) {}
    fn finish(&self) {}
    fn abandon(&self) {}
}
