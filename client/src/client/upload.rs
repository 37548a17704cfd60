//! An upload in flight (spec §3.12): the server's first answer (where it continues, with the
//! digest of what it holds), data sent within the limit the server's answers grant, and the
//! end, answered by the server's own end once the file has its final name.
//!
//! The limit is the flow control: [`Upload::send`] waits for an answer that moves it on before
//! it queues bytes past it, so the writer's queue holds at most one window of data.

use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::message::{PutEnd, PutRequest, PutResponse};
use ferry_protocol::{Message, Service};

use super::streams::Pending;
use super::{unexpected, Client};
use crate::error::ClientError;

/// Why an upload stops on a connection whose own key passed its close-soon point.
const RETIRING_UPLOAD: &str =
    "this connection's key is near its usage limit (spec 5.5), so the upload continues on a new connection";

/// One upload, from the server's first answer to its end. Dropping it before
/// [`Upload::finish`] cancels it; the server keeps what it received for a resume.
#[derive(Debug)]
pub struct Upload {
    pending: Pending,
    first: PutResponse,
    size: u64,
    /// The file offset of the next byte to send.
    sent: u64,
    /// Bytes may be sent up to here (exclusive).
    limit: u64,
    request_timeout: Duration,
}

impl Client {
    /// Starts an upload and waits for the server's first answer: where the data must start
    /// (a partial it already holds, see [`Upload::offset`]) and how much may be sent. The
    /// server may hash its partial first, so the answer is awaited like a digest (60 s plus
    /// 1 s per 20 MB).
    pub async fn put(&self, request: PutRequest) -> Result<Upload, ClientError> {
        let size = request.size;
        let mut pending = self.start(Service::PUT, Message::PutRequest(request))?;
        let timeout = self.shared.request_timeout + Duration::from_secs(size / 20_000_000);
        let frame = pending.next_within(timeout).await?;
        let first = match pending.decode(&frame)? {
            Message::PutResponse(first) => first,
            Message::Error { body, .. } => {
                pending.done = true;
                return Err(ClientError::Remote(body));
            }
            other => return Err(unexpected("put", &other)),
        };
        if first.offset > size || first.limit > size {
            return Err(ClientError::Protocol(format!(
                "the server answered an upload of {size} bytes with offset {} and limit {}",
                first.offset, first.limit
            )));
        }
        Ok(Upload {
            pending,
            first,
            size,
            sent: first.offset,
            limit: first.limit,
            request_timeout: self.shared.request_timeout,
        })
    }
}

impl Client {
    /// Makes the remote directory `path` (and its missing parents with `parents`); an existing
    /// directory is fine. How `put -r` carries a directory with nothing in it.
    pub async fn make_dir(&self, path: &str, mode: u32, parents: bool) -> Result<(), ClientError> {
        let request = PutRequest::directory(path, mode, parents)
            .map_err(|e| ClientError::Local(format!("{path}: {e}")))?;
        let mut pending = self.start(Service::PUT, Message::PutRequest(request))?;
        let frame = pending.next_within(self.shared.request_timeout).await?;
        pending.done = true;
        match pending.decode(&frame)? {
            Message::PutEnd(end) if end.bytes == 0 && end.digest == [0; 32] => Ok(()),
            Message::Error { body, .. } => Err(ClientError::Remote(body)),
            other => Err(unexpected("mkdir", &other)),
        }
    }
}

impl Upload {
    /// Where the data starts: the bytes of the file the server already holds.
    pub fn offset(&self) -> u64 {
        self.first.offset
    }

    /// BLAKE3 of the first [`Upload::offset`] bytes the server holds. The caller must compare
    /// it with its own file before continuing; on a mismatch, drop this upload and start again
    /// with the restart flag.
    pub fn prefix(&self) -> [u8; 32] {
        self.first.prefix
    }

    /// The file offset of the next byte to send.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends the next bytes of the file, first waiting until the server allows them.
    pub async fn send(&mut self, data: Bytes) -> Result<(), ClientError> {
        let end = self.sent + data.len() as u64;
        if end > self.size {
            return Err(ClientError::Local(format!(
                "{} bytes past the announced size of {}",
                end - self.size,
                self.size
            )));
        }
        // Spec §5.5: past our key's close-soon point the upload stops here, its bytes kept in
        // the server's partial, and goes on over a new connection (the 1 GiB left to the hard
        // limit is never needed).
        if !self.pending.charge_upload(data.len()) {
            return Err(ClientError::Retired(format!(
                "{RETIRING_UPLOAD} after byte {} of {}",
                self.sent, self.size
            )));
        }
        // Take the answers that are already here, then wait only while out of credit.
        while let Some(answer) = self.answer(Duration::ZERO).await? {
            self.limit = self.limit.max(answer.limit);
        }
        while end > self.limit {
            match self.answer(self.request_timeout).await? {
                Some(answer) => self.limit = self.limit.max(answer.limit.min(self.size)),
                None => {
                    return Err(ClientError::Timeout {
                        what: "waiting for the server to accept more upload data".into(),
                        secs: self.request_timeout.as_secs(),
                    })
                }
            }
        }
        self.pending.send(Message::PutData(data))?;
        self.sent = end;
        Ok(())
    }

    /// The next flow-control answer within `wait`, `None` when none came. An error or an
    /// early end from the server ends the upload.
    async fn answer(&mut self, wait: Duration) -> Result<Option<PutResponse>, ClientError> {
        let frame = match self.pending.next_within(wait).await {
            Ok(frame) => frame,
            Err(ClientError::Timeout { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        match self.pending.decode(&frame)? {
            Message::PutResponse(answer) => Ok(Some(answer)),
            Message::Error { body, .. } => {
                self.pending.done = true;
                Err(ClientError::Remote(body))
            }
            other => {
                self.pending.done = true;
                Err(unexpected("put data", &other))
            }
        }
    }

    /// Ends the upload with the whole file's length and digest, and waits for the server to
    /// store it under its final name. Returns the server's end: what it stored.
    pub async fn finish(mut self, end: PutEnd) -> Result<PutEnd, ClientError> {
        if self.sent != self.size {
            return Err(ClientError::Local(format!(
                "upload ended after {} of {} bytes",
                self.sent, self.size
            )));
        }
        self.pending.send(Message::PutEnd(end))?;
        // Checking and syncing the file takes a moment; answers sent before it are skipped.
        let timeout = self.request_timeout + Duration::from_secs(self.size / 200_000_000);
        loop {
            let frame = self.pending.next_within(timeout).await?;
            match self.pending.decode(&frame)? {
                Message::PutResponse(_) => {}
                Message::PutEnd(stored) => {
                    self.pending.done = true;
                    return Ok(stored);
                }
                Message::Error { body, .. } => {
                    self.pending.done = true;
                    return Err(ClientError::Remote(body));
                }
                other => {
                    self.pending.done = true;
                    return Err(unexpected("put end", &other));
                }
            }
        }
    }
}
