//! The writer: the only task that touches the socket's write half and the `SendHalf`, since
//! sealing assigns the implicit sequence numbers (spec §5.5), so exactly one task may seal, in
//! wire order.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::{Message, RequestId, SendHalf, Service};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::service::Out;

/// The writer stops batching once this much is encoded.
const WRITE_BATCH: usize = 256 * 1024;
/// Smaller plaintext chunks are copied into the batch rather than sent as their own segment.
const ZERO_COPY_MIN: usize = 4096;

/// The writer: takes frames from both queues (control first), seals them and writes them in
/// batches of about [`WRITE_BATCH`] bytes, one `writev` at a time.
///
/// In plaintext mode a data chunk is not copied: the batch holds its 12-byte header and the
/// chunk's own `Bytes` (a slice of the fetch's read buffer) side by side. Encrypted frames are
/// sealed into the batch buffer, which is the one copy encryption needs anyway; data chunks
/// wait in `unsealed` and are sealed together (interleaved CBC chains, several times faster
/// than one record at a time), always before any later frame, so wire order is kept.
pub(super) struct Writer<W> {
    send: SendHalf,
    /// Negotiated version, for headers written here directly (plaintext data).
    version: u8,
    plaintext: bool,
    io: W,
    write_timeout: Duration,
    /// Encoded bytes not yet split into `segments`.
    scratch: BytesMut,
    /// What the next `writev` sends, in order.
    segments: VecDeque<Bytes>,
    batched: usize,
    /// Encrypted mode: data chunks queued for sealing together, in order.
    unsealed: Vec<(RequestId, Bytes)>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(send: SendHalf, version: u8, io: W, write_timeout: Duration) -> Self {
        let plaintext = send.mode() == ferry_protocol::Mode::PLAINTEXT;
        Self {
            send,
            version,
            plaintext,
            io,
            write_timeout,
            scratch: BytesMut::with_capacity(WRITE_BATCH + 128 * 1024),
            segments: VecDeque::new(),
            batched: 0,
            unsealed: Vec::new(),
        }
    }

    pub async fn run(mut self, mut ctrl: mpsc::Receiver<Out>, mut data: mpsc::Receiver<Out>) {
        let (mut ctrl_open, mut data_open) = (true, true);
        loop {
            let first = tokio::select! {
                biased;
                m = ctrl.recv(), if ctrl_open => match m {
                    Some(m) => m,
                    None => { ctrl_open = false; continue; }
                },
                m = data.recv(), if data_open => match m {
                    Some(m) => m,
                    None => { data_open = false; continue; }
                },
                else => break,
            };
            if let Err(error) = self.push(first) {
                tracing::warn!(%error, "cannot encode a frame; closing");
                return;
            }
            while self.batched < WRITE_BATCH {
                let next = match ctrl.try_recv() {
                    Ok(next) => next,
                    Err(_) => match data.try_recv() {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                };
                if let Err(error) = self.push(next) {
                    tracing::warn!(%error, "cannot encode a frame; closing");
                    return;
                }
            }
            if let Err(error) = self.seal_unsealed() {
                tracing::warn!(%error, "cannot encode a frame; closing");
                return;
            }
            match tokio::time::timeout(self.write_timeout, self.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "write failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        timeout = %humantime::format_duration(self.write_timeout),
                        "client stopped reading; closing"
                    );
                    return;
                }
            }
        }
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
    }

    /// Encodes one frame into the batch.
    fn push(&mut self, (id, message): Out) -> Result<(), ferry_protocol::Error> {
        match message {
            Message::Data(body) if self.plaintext && body.len() >= ZERO_COPY_MIN => {
                let header = ferry_protocol::Header {
                    kind: ferry_protocol::FrameType::DATA,
                    version: self.version,
                    service: Service::FETCH,
                    id,
                    // Chunks are at most `chunk`, which fits a u32 and the peer's cap.
                    length: u32::try_from(body.len()).unwrap_or(u32::MAX),
                };
                header.encode(&mut self.scratch);
                self.segments.push_back(self.scratch.split().freeze());
                self.batched += ferry_protocol::HEADER_LEN + body.len();
                self.segments.push_back(body);
            }
            Message::Data(body) if !self.plaintext => {
                self.batched += self.send.frame_len(body.len());
                self.unsealed.push((id, body));
            }
            message => {
                self.seal_unsealed()?;
                let before = self.scratch.len();
                self.send.write_message(id, &message, &mut self.scratch)?;
                self.batched += self.scratch.len() - before;
            }
        }
        Ok(())
    }

    /// Seals the queued data chunks, together, into the batch.
    fn seal_unsealed(&mut self) -> Result<(), ferry_protocol::Error> {
        if self.unsealed.is_empty() {
            return Ok(());
        }
        let frames: Vec<_> = self
            .unsealed
            .iter()
            .map(|(id, body)| {
                (
                    ferry_protocol::FrameType::DATA,
                    Service::FETCH,
                    *id,
                    &body[..],
                )
            })
            .collect();
        let result = self.send.write_frames(&frames, &mut self.scratch);
        self.unsealed.clear();
        result
    }

    /// Writes every batched segment.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.scratch.is_empty() {
            self.segments.push_back(self.scratch.split().freeze());
        }
        while !self.segments.is_empty() {
            let slices: Vec<std::io::IoSlice<'_>> = self
                .segments
                .iter()
                .take(64)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            let mut written = self.io.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let Some(front) = self.segments.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.segments.pop_front();
                } else {
                    bytes::Buf::advance(front, written);
                    written = 0;
                }
            }
        }
        self.batched = 0;
        // Reclaim the scratch allocation once every frozen piece of it has been written.
        self.scratch.reserve(WRITE_BATCH);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::Session;
    use tokio::io::AsyncReadExt;

    /// Control frames go first, data frames keep their order, large plaintext chunks take the
    /// zero-copy path and small ones the batch, encrypted chunks are sealed together, and the
    /// write half is shut down once both queues are closed: in both modes, without a socket.
    #[tokio::test]
    async fn control_first_then_data_in_order_then_shutdown() {
        for encrypted in [false, true] {
            let (client, server) = Session::dangerous_pair_with_fixed_keys(encrypted);
            let (mut client_recv, (send, _)) = (client.into_split().1, server.into_split());
            let (ours, mut theirs) = tokio::io::duplex(1 << 20);
            let (ctrl_tx, ctrl_rx) = mpsc::channel(4);
            let (data_tx, data_rx) = mpsc::channel(4);
            let big = Bytes::from(vec![7u8; ZERO_COPY_MIN + 1]);
            let small = Bytes::from_static(b"tail");
            data_tx
                .send((RequestId(1), Message::Data(big.clone())))
                .await
                .unwrap();
            data_tx
                .send((RequestId(2), Message::Data(small.clone())))
                .await
                .unwrap();
            ctrl_tx
                .send((RequestId(3), Message::Pong(Bytes::from_static(b"p"))))
                .await
                .unwrap();
            drop((ctrl_tx, data_tx));
            Writer::new(send, 1, ours, Duration::from_secs(60))
                .run(ctrl_rx, data_rx)
                .await;
            let mut wire = Vec::new();
            theirs.read_to_end(&mut wire).await.unwrap();
            let mut wire = BytesMut::from(&wire[..]);
            let mut got = Vec::new();
            while let Some(frame) = client_recv.read_frame(&mut wire).unwrap() {
                got.push((frame.header.id, frame.message().unwrap()));
            }
            assert!(wire.is_empty());
            assert_eq!(
                got,
                vec![
                    (RequestId(3), Message::Pong(Bytes::from_static(b"p"))),
                    (RequestId(1), Message::Data(big)),
                    (RequestId(2), Message::Data(small)),
                ],
                "encrypted: {encrypted}"
            );
        }
    }
}
