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
        while let Some(frame) = self.pending.try_next()? {
            let answer = self.answer_in(frame)?;
            self.limit = self.limit.max(answer.limit.min(self.size));
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
        match self.pending.next_within(wait).await {
            Ok(frame) => self.answer_in(frame).map(Some),
            Err(ClientError::Timeout { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A flow-control answer out of `frame`; an error or an early end from the server ends
    /// the upload.
    fn answer_in(&mut self, frame: ferry_protocol::Frame) -> Result<PutResponse, ClientError> {
        match self.pending.decode(&frame)? {
            Message::PutResponse(answer) => Ok(answer),
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use ferry_protocol::message::{PutEnd, PutRequest, PutResponse};
    use ferry_protocol::{Key, Message, ServerHandshakeConfig};
    use futures::{SinkExt, StreamExt};

    use super::super::{Client, ClientConfig};

    /// A server that grants every upload its whole size at once, drops the data and stores
    /// whatever end it is sent.
    async fn generous_server(io: tokio::io::DuplexStream, key: Key) {
        let mut conn = ferry_protocol::tokio::accept(io, ServerHandshakeConfig::new(key))
            .await
            .unwrap();
        while let Some(Ok(frame)) = conn.next().await {
            let id = frame.header.id;
            let reply = match frame.message().unwrap() {
                Message::PutRequest(r) => Message::PutResponse(PutResponse {
                    offset: 0,
                    limit: r.size,
                    prefix: [0; 32],
                }),
                Message::PutEnd(end) => Message::PutEnd(end),
                _ => continue,
            };
            conn.send((id, reply)).await.unwrap();
        }
    }

    /// With credit in hand, sending waits for nothing: it looks for answers already there
    /// without a timer. A zero timeout still waits for the timer wheel's next tick (up to a
    /// millisecond), which capped `ferry put` at about 54 MB/s on loopback in 32 KiB chunks.
    /// Paused time moves only when every task waits on a timer, so any such wait shows here.
    #[tokio::test(start_paused = true)]
    async fn sending_within_the_granted_limit_waits_on_no_timer() {
        let key = Key::generate();
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(generous_server(b, key.clone()));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let client = Client::handshake(a, peer, ClientConfig::new(key))
            .await
            .unwrap();
        let (chunks, chunk) = (64u64, 32 * 1024);
        let request = PutRequest::new("f", chunks * chunk as u64, 0o644, 0, [7; 32]).unwrap();
        let mut upload = client.put(request).await.unwrap();
        // Half-way between two ticks of the timer wheel, so that a timer of zero length is due
        // only at the next tick, which paused time must move to.
        tokio::time::advance(std::time::Duration::from_micros(500)).await;
        let start = tokio::time::Instant::now();
        for _ in 0..chunks {
            upload.send(Bytes::from(vec![0u8; chunk])).await.unwrap();
        }
        assert_eq!(
            tokio::time::Instant::now() - start,
            std::time::Duration::ZERO,
            "sending waited on a timer"
        );
        let end = PutEnd {
            bytes: chunks * chunk as u64,
            digest: [7; 32],
        };
        assert_eq!(upload.finish(end).await.unwrap(), end);
    }
}
