//! The writer task: the server's two queues as the driver's [`Outbox`]. The
//! [`FrameWriter`] is the only holder of the socket's write half and the `SendHalf`, since
//! sealing assigns the implicit sequence numbers (spec §5.5), so exactly one task may seal, in
//! wire order.

use ferry_protocol::driver::{Batch, FrameWriter, Outbox, WriteError};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use crate::service::Out;

/// The control queue (pongs, refusals), drained first, then the data queue (request frames,
/// `CANCELLED`, the goodbye), in FIFO order. Both are bounded: when the client stops reading,
/// the writer blocks in its write, the queues fill and their senders wait.
pub(super) struct Queues {
    ctrl: mpsc::Receiver<Out>,
    data: mpsc::Receiver<Out>,
    ctrl_open: bool,
    data_open: bool,
}

impl Queues {
    pub fn new(ctrl: mpsc::Receiver<Out>, data: mpsc::Receiver<Out>) -> Self {
        Self {
            ctrl,
            data,
            ctrl_open: true,
            data_open: true,
        }
    }
}

impl Outbox for Queues {
    type Item = Out;

    async fn recv(&mut self) -> Option<Out> {
        loop {
            tokio::select! {
                biased;
                out = self.ctrl.recv(), if self.ctrl_open => match out {
                    Some(out) => return Some(out),
                    None => self.ctrl_open = false,
                },
                out = self.data.recv(), if self.data_open => match out {
                    Some(out) => return Some(out),
                    None => self.data_open = false,
                },
                else => return None,
            }
        }
    }

    fn try_recv(&mut self) -> Option<Out> {
        self.ctrl.try_recv().or_else(|_| self.data.try_recv()).ok()
    }

    fn encode(
        &mut self,
        (id, message): Out,
        batch: &mut Batch,
    ) -> Result<(), ferry_protocol::Error> {
        batch.push(id, message)
    }
}

/// Writes what both queues carry until every sender is gone, then shuts the write half down;
/// a client that takes nothing for the write timeout ends it early.
pub(super) async fn run<W: AsyncWrite + Unpin>(mut writer: FrameWriter<W>, queues: Queues) {
    match writer.run(queues).await {
        Ok(()) => {}
        Err(WriteError::Encode(error)) => tracing::warn!(%error, "cannot encode a frame; closing"),
        Err(WriteError::Io(error)) => tracing::debug!(%error, "write failed"),
        Err(WriteError::Timeout(limit)) => tracing::debug!(
            timeout = %humantime::format_duration(limit),
            "client stopped reading; closing"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use ferry_protocol::driver::ZERO_COPY_MIN;
    use ferry_protocol::{Message, RequestId, Session};
    use std::time::Duration;
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
            let writer = FrameWriter::new(ours, send, 1).write_timeout(Duration::from_secs(60));
            run(writer, Queues::new(ctrl_rx, data_rx)).await;
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
