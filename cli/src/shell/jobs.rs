//! How transfers run: in the foreground, where Ctrl-C asks them to stop and keep their
//! partial files, or as background jobs that `jobs` lists, `jobs -w` watches with live bars,
//! a line reports as they end, and the shell waits for (or cancels) when it leaves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::HumanBytes;
use tokio::task::JoinHandle;

use super::Shell;
use crate::commands::print_lines;
use crate::progress::{self, Progress};
use ferry_client::error::ClientError;
use ferry_client::transfer::{cancel_pair, Cancel, CancelHandle};

/// Lines from finished background jobs, printed before the next prompt (as a Unix shell
/// reports finished jobs). rustyline's `ExternalPrinter` could print them at once, but with it
/// rustyline 14 stalls on typed-ahead or pasted input, which is worse.
pub(super) type Notices = Arc<Mutex<Vec<(usize, String)>>>;

/// A job's outcome: `None` while running, then its one-line summary or error.
type JobResult = Arc<Mutex<Option<Result<String, String>>>>;

/// A background transfer.
pub(super) struct Job {
    id: usize,
    label: String,
    started: Instant,
    progress: Progress,
    cancel: CancelHandle,
    task: JoinHandle<()>,
    result: JobResult,
}

impl Shell {
    /// Runs a transfer in the foreground; Ctrl-C asks it to stop and waits for it to record
    /// its partial file.
    pub(super) fn transfer<T, F>(&self, f: impl FnOnce(Cancel) -> F) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        let (handle, cancel) = cancel_pair();
        self.handle.block_on(async move {
            let watcher = tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    handle.cancel();
                }
            });
            let result = f(cancel).await;
            watcher.abort();
            result
        })
    }

    pub(super) fn spawn_job<F, Fut>(&mut self, label: String, run: F)
    where
        F: FnOnce(Progress, Cancel) -> Fut,
        Fut: std::future::Future<Output = Result<String, ClientError>> + Send + 'static,
    {
        let id = self.next_job;
        self.next_job += 1;
        let (handle, cancel) = cancel_pair();
        let progress = Progress::hidden();
        let result: JobResult = Arc::default();
        let fut = run(progress.clone(), cancel);
        let slot = result.clone();
        let notices = self.notices.clone();
        let job_label = label.clone();
        let task = self.handle.spawn(async move {
            let outcome = fut.await.map_err(|e| e.to_string());
            let line = match &outcome {
                Ok(summary) => format!("[{id}] done: {job_label}: {summary}"),
                Err(e) => format!("[{id}] failed: {job_label}: {e}"),
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(outcome);
            }
            if let Ok(mut notices) = notices.lock() {
                notices.push((id, line));
            }
        });
        print_lines([format!("[{id}] started: {label}")]);
        self.jobs.push(Job {
            id,
            label,
            started: Instant::now(),
            progress,
            cancel: handle,
            task,
            result,
        });
    }

    /// Reports background jobs that ended since the last prompt.
    pub(super) fn print_notices(&self) {
        let lines = match self.notices.lock() {
            Ok(mut notices) => std::mem::take(&mut *notices),
            Err(_) => return,
        };
        for (_, line) in lines {
            eprintln!("{line}");
        }
    }

    pub(super) fn jobs(&mut self) {
        if self.jobs.is_empty() {
            print_lines(["no jobs"]);
            return;
        }
        let mut lines = Vec::new();
        for job in &self.jobs {
            let result = job.result.lock().ok().and_then(|r| r.clone());
            let line = match result {
                Some(Ok(summary)) => format!("[{}] done     {}: {summary}", job.id, job.label),
                Some(Err(e)) => format!("[{}] failed   {}: {e}", job.id, job.label),
                None => {
                    let t = job.progress.totals();
                    let elapsed = job.started.elapsed();
                    let fetched = t.done.saturating_sub(t.resumed);
                    let rate = (fetched as f64 / elapsed.as_secs_f64().max(0.001)) as u64;
                    let remaining = t.total.saturating_sub(t.done);
                    let eta = if rate > 0 {
                        Duration::from_secs_f64(remaining as f64 / rate as f64)
                    } else {
                        Duration::ZERO
                    };
                    let eta = progress::format_eta(eta, remaining);
                    format!(
                        "[{}] running  {}: {}/{} in {} file(s), {}/s, ETA {eta}",
                        job.id,
                        job.label,
                        HumanBytes(t.done),
                        HumanBytes(t.total),
                        t.active,
                        HumanBytes(rate)
                    )
                }
            };
            lines.push(line);
        }
        print_lines(lines);
        // Finished jobs were just reported: no separate notice for them, and they are forgotten.
        let finished: Vec<usize> = self
            .jobs
            .iter()
            .filter(|j| j.result.lock().map(|r| r.is_some()).unwrap_or(true))
            .map(|j| j.id)
            .collect();
        if let Ok(mut notices) = self.notices.lock() {
            notices.retain(|(id, _)| !finished.contains(id));
        }
        self.jobs
            .retain(|j| j.result.lock().map(|r| r.is_none()).unwrap_or(false));
    }

    /// `jobs -w`: live progress bars of every running background transfer until they end or
    /// Ctrl-C (which only stops the watching). The prompt is not shown meanwhile, so the bars
    /// have the terminal to themselves.
    pub(super) fn watch_jobs(&mut self) {
        let view = self.ctx.progress();
        if !view.is_visible() {
            self.jobs();
            return;
        }
        let jobs: Vec<(usize, Progress, JobResult)> = self
            .jobs
            .iter()
            .filter(|j| !j.task.is_finished())
            .map(|j| (j.id, j.progress.clone(), j.result.clone()))
            .collect();
        if jobs.is_empty() {
            print_lines(["no running jobs"]);
            return;
        }
        self.handle.block_on(async move {
            let mut seen = vec![0usize; jobs.len()];
            let mut mirrors: Vec<(indicatif::ProgressBar, indicatif::ProgressBar)> = Vec::new();
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                for (i, (id, progress, _)) in jobs.iter().enumerate() {
                    let bars = progress.bars();
                    for source in &bars[seen[i]..] {
                        if !source.is_finished() {
                            let label = format!("[{id}] {}", source.message());
                            mirrors.push((source.clone(), view.mirror(source, &label)));
                        }
                    }
                    seen[i] = bars.len();
                }
                mirrors.retain(|(source, mirror)| {
                    Progress::sync(source, mirror);
                    if source.is_finished() {
                        mirror.finish_and_clear();
                    }
                    !source.is_finished()
                });
                let all_done = jobs
                    .iter()
                    .all(|(_, _, r)| r.lock().map(|r| r.is_some()).unwrap_or(true));
                if all_done {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = &mut ctrl_c => break,
                }
            }
            for (_, mirror) in mirrors {
                mirror.finish_and_clear();
            }
        });
        self.print_notices();
    }

    /// Waits for background jobs before leaving; Ctrl-C cancels them (partials are kept).
    pub(super) fn finish_jobs(&mut self) {
        let running: Vec<Job> = self
            .jobs
            .drain(..)
            .filter(|j| !j.task.is_finished())
            .collect();
        if running.is_empty() {
            return;
        }
        eprintln!(
            "waiting for {} background job(s); Ctrl-C cancels them and keeps partial files",
            running.len()
        );
        self.handle.block_on(async {
            let cancels: Vec<CancelHandle> = running.iter().map(|j| j.cancel.clone()).collect();
            let watcher = tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    for c in cancels {
                        c.cancel();
                    }
                }
            });
            for job in running {
                let _ = job.task.await;
            }
            watcher.abort();
        });
    }
}
