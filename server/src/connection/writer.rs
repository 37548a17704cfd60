//! The writer task: the server's two queues as the driver's [`Outbox`]. The
//! [`FrameWriter`] is the only holder of the socket's write half and the `SendHalf`, since
//! sealing assigns the implicit sequence numbers (spec §5.5), so only one holder of it may
//! seal at a time, in wire order.
//!
//! The [`FrameWriter`] sits in a [`Link`], behind a lock that the writer task holds while it
//! writes. The reader may take it when the writer is idle (nothing queued, nothing taken from
//! a queue and not yet written) and write a small answer itself, in the reader's own task:
//! waking the writer task on another worker for one `writev` costs a futex per request.

use std::collections::HashSet;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ferry_protocol::crypto::{gcm, RecordSuite};
use ferry_protocol::driver::{Batch, FrameWriter, Outbox, WriteError};
use ferry_protocol::{ErrorBody, ErrorCode, Message, RequestId, Service};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

impl Queues {
    /// The next item, control first, as [`Outbox::recv`] but by polling, so that the caller
    /// can mark it taken in the same step.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        if self.ctrl_open {
            match self.ctrl.poll_recv(cx) {
                Poll::Ready(Some(out)) => return Poll::Ready(Some(out)),
                Poll::Ready(None) => self.ctrl_open = false,
                Poll::Pending => {}
            }
        }
        if self.data_open {
            match self.data.poll_recv(cx) {
                Poll::Ready(Some(out)) => return Poll::Ready(Some(out)),
                Poll::Ready(None) => self.data_open = false,
                Poll::Pending => {}
            }
        }
        if self.ctrl_open || self.data_open {
            Poll::Pending
        } else {
            Poll::Ready(None)
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

/// The connection's [`FrameWriter`], shared by the writer task and the reader.
pub(super) struct Link<W> {
    /// Whether the writer task holds an item it took from a queue and has not written yet.
    /// Set in the same step as the item is taken, so that "queues empty and not busy" means
    /// nothing the reader or a request queued before now is still unwritten.
    busy: Mutex<bool>,
    writer: tokio::sync::Mutex<Sealing<W>>,
    /// The record layer said the key is near its usage limit (spec §5.5): the reader starts
    /// no more requests and closes once those in flight are done.
    closing: AtomicBool,
    /// The key's usage limit is reached ([`KeyBudget`]): the reader closes now.
    spent: CancellationToken,
}

impl<W> std::fmt::Debug for Link<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin + Send> Link<W> {
    /// A link whose key starts unused (tests).
    #[cfg(test)]
    pub fn new(mut writer: FrameWriter<W>) -> Arc<Self> {
        let budget = KeyBudget::new(writer.batch().send_half().suite(), 0, 0);
        Self::with_budget(writer, budget)
    }

    /// A link that seals at most what `budget` allows.
    pub fn with_budget(writer: FrameWriter<W>, budget: KeyBudget) -> Arc<Self> {
        Arc::new(Self {
            busy: Mutex::new(false),
            writer: tokio::sync::Mutex::new(Sealing {
                frames: writer,
                budget,
            }),
            closing: AtomicBool::new(false),
            spent: CancellationToken::new(),
        })
    }

    /// Whether the connection's send key is near its usage limit (spec §5.5).
    pub fn closing_soon(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Cancelled once the key's usage limit is reached: only the final frames are sealed.
    pub fn spent(&self) -> &CancellationToken {
        &self.spent
    }

    /// Batches one item, as the key's budget lets it through (spec §5.5).
    fn push(
        &self,
        writer: &mut Sealing<W>,
        (id, message): Out,
    ) -> Result<(), ferry_protocol::Error> {
        let admitted = writer.budget.admit(id, message);
        if writer.budget.is_spent() && !self.spent.is_cancelled() {
            // Spent implies past the close-soon point: no new request starts meanwhile.
            self.closing.store(true, Ordering::Release);
            self.spent.cancel();
        }
        match admitted {
            Some(message) => writer.frames.batch().push(id, message),
            None => Ok(()),
        }
    }

    /// Writes what is batched, noting first whether sealing it crossed the key's close-soon
    /// point: before the client can see these frames and send its next request.
    async fn flush(&self, writer: &mut FrameWriter<W>) -> Result<(), WriteError> {
        writer.batch().seal()?;
        if writer.batch().send_half().close_soon() {
            self.closing.store(true, Ordering::Release);
        }
        writer.flush().await
    }

    /// The writer, if nothing queued waits for it: `queues` are the senders of both queues,
    /// checked empty under the same lock that the writer task marks an item taken. Frames
    /// then written through it reach the wire after everything queued before this call, and
    /// before whatever is queued after (which the writer task writes once the lock is free).
    pub fn idle_writer(
        &self,
        queues: [&mpsc::Sender<Out>; 2],
    ) -> Option<tokio::sync::MutexGuard<'_, Sealing<W>>> {
        let busy = self.busy.lock().ok()?;
        if *busy || queues.iter().any(|q| q.capacity() != q.max_capacity()) {
            return None;
        }
        self.writer.try_lock().ok()
    }

    /// Writes `frames` of request `id` through an idle writer (see [`Link::idle_writer`]),
    /// in one `writev`: `None` if the writer is not idle (queue them instead).
    pub async fn write_now(
        &self,
        queues: [&mpsc::Sender<Out>; 2],
        id: RequestId,
        frames: &mut Vec<Message>,
    ) -> Option<Result<(), WriteError>> {
        let mut writer = self.idle_writer(queues)?;
        for message in frames.drain(..) {
            if let Err(error) = self.push(&mut writer, (id, message)) {
                return Some(Err(error.into()));
            }
        }
        Some(self.flush(&mut writer.frames).await)
    }

    /// Takes the next queued item and marks the writer busy in one step; marks it idle when
    /// nothing is queued.
    fn poll_take(&self, queues: &mut Queues, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let taken = queues.poll_take(cx);
        *busy = matches!(taken, Poll::Ready(Some(_)));
        taken
    }
}

/// Writes what both queues carry until every sender is gone, then shuts the write half down;
/// a client that takes nothing for the write timeout ends it early. Holds the writer only
/// while it writes, so that the reader may write through it meanwhile.
pub(super) async fn run_shared<W: AsyncWrite + Unpin + Send>(
    link: Arc<Link<W>>,
    mut queues: Queues,
) {
    let result = async {
        loop {
            let first = poll_fn(|cx| link.poll_take(&mut queues, cx)).await;
            let mut writer = link.writer.lock().await;
            let Some(first) = first else {
                return writer.shutdown().await;
            };
            link.push(&mut writer, first)?;
            while !writer.batch().is_full() {
                let Some(next) = queues.try_recv() else {
                    break;
                };
                link.push(&mut writer, next)?;
            }
            link.flush(&mut writer.frames).await?;
        }
    }
    .await;
    ended(result);
}

/// The connection's [`FrameWriter`] with what its key may still seal.
#[derive(Debug)]
pub(super) struct Sealing<W> {
    frames: FrameWriter<W>,
    budget: KeyBudget,
}

impl<W> std::ops::Deref for Sealing<W> {
    type Target = FrameWriter<W>;

    fn deref(&self) -> &FrameWriter<W> {
        &self.frames
    }
}

impl<W> std::ops::DerefMut for Sealing<W> {
    fn deref_mut(&mut self) -> &mut FrameWriter<W> {
        &mut self.frames
    }
}

/// The send key's usage limit as the writer spends it (spec §5.5), counted as the record layer
/// counts it (`gcm::blocks` of each record's plaintext). Frames are sealed only while they
/// leave room for the final ones: a `SHUTTING_DOWN` error for each request still open and the
/// goodbye. The first frame that would eat into that room spends the key: from then on each
/// request's next frame becomes its `SHUTTING_DOWN` error (later ones are dropped), the next
/// id-0 error becomes the goodbye, and nothing else is sealed. The record layer still refuses
/// any record past the limit; this only makes sure the final frames fit below it.
#[derive(Debug)]
pub(super) struct KeyBudget {
    /// The suite's limit in blocks; `None` where it has none (plaintext, CBC + HMAC).
    limit: Option<u64>,
    /// Blocks sealed under the key, or batched to be.
    used: u64,
    /// Blocks kept for the final frames while the key is not spent.
    reserve: u64,
    /// Blocks one final frame costs at most.
    final_blocks: u64,
    spent: Option<Spent>,
}

/// What a spent key still owes.
#[derive(Debug)]
struct Spent {
    /// The body of every final frame.
    body: ErrorBody,
    /// Requests already given their final frame, whose later frames are dropped.
    ended: HashSet<RequestId>,
    goodbye: bool,
}

impl KeyBudget {
    /// A budget for a key of `suite` that has already sealed `used` blocks, keeping room for
    /// `finals` request errors and the goodbye.
    pub fn new(suite: RecordSuite, used: u64, finals: usize) -> Self {
        let final_blocks = gcm::blocks(final_body(u64::MAX, u64::MAX).encoded_len());
        Self {
            limit: suite.block_limit(),
            used,
            reserve: final_blocks.saturating_mul(finals as u64 + 1),
            final_blocks,
            spent: None,
        }
    }

    /// Blocks kept for the final frames.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    pub fn is_spent(&self) -> bool {
        self.spent.is_some()
    }

    /// `message` of request `id` as it may be sealed now, or `None` to drop it.
    fn admit(&mut self, id: RequestId, message: Message) -> Option<Message> {
        let Some(limit) = self.limit else {
            return Some(message);
        };
        if self.spent.is_none() {
            let cost = gcm::blocks(message.encoded_len());
            let after = self.used.saturating_add(cost);
            if after.saturating_add(self.reserve) <= limit {
                self.used = after;
                return Some(message);
            }
            tracing::debug!(used = self.used, limit, "key usage limit reached; closing");
            self.spent = Some(Spent {
                body: final_body(self.used, limit),
                ended: HashSet::new(),
                goodbye: false,
            });
        }
        let spent = self.spent.as_mut()?;
        let room = limit.saturating_sub(self.used);
        let (service, keep) = if id == RequestId::CONNECTION {
            // Only the goodbye, once; pongs and the like are dropped.
            if !matches!(message, Message::Error { .. }) || spent.goodbye {
                return None;
            }
            spent.goodbye = true;
            (Service::HANDSHAKE, 0)
        } else if spent.ended.insert(id) {
            // The goodbye's share stays.
            (message.kind().1, self.final_blocks)
        } else {
            return None;
        };
        let cost = gcm::blocks(spent.body.encoded_len());
        if cost.saturating_add(keep) > room {
            return None;
        }
        self.used += cost;
        Some(Message::Error {
            service,
            body: spent.body.clone(),
        })
    }
}

/// The final frames' body once the key has sealed `used` of its `limit` blocks.
fn final_body(used: u64, limit: u64) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::SHUTTING_DOWN,
        format!(
            "this connection's key reached its usage limit (spec 5.5): {used} of {limit} blocks sealed, the rest kept to close; continue on a new connection"
        ),
    )
}

/// Says why a writer stopped.
pub(super) fn ended(result: Result<(), WriteError>) {
    match result {
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

    /// Spec §5.5: once a frame would eat into the room kept for the final frames, each request
    /// gets one `SHUTTING_DOWN` error (its later frames are dropped), id 0 gets one goodbye
    /// (pongs are dropped), and a real GCM sealer that starts as near its limit takes every
    /// admitted record: as many errors as the budget was sized for, and the goodbye, fit.
    #[test]
    fn a_spent_key_seals_one_error_per_request_and_one_goodbye_below_its_limit() {
        const FINALS: usize = 4;
        let gcm_suite = RecordSuite::Aes256Gcm;
        let reserve = KeyBudget::new(gcm_suite, 0, FINALS).reserve;
        // Room for six 301-block chunks beyond the reserve, not seven.
        let room = reserve + 2000;
        let start = gcm::BLOCK_LIMIT - room;
        let mut budget = KeyBudget::new(gcm_suite, start, FINALS);
        let (_, server) = Session::dangerous_pair_with_suite(gcm_suite);
        let mut send = server.into_split().0;
        send.assume_blocks_used(start);
        let mut wire = BytesMut::new();
        let mut admit = |id: u32, message: Message| {
            let message = budget.admit(RequestId(id), message)?;
            // The record layer refuses anything past the limit: every admitted frame seals.
            send.write_message(RequestId(id), &message, &mut wire)
                .expect("sealed below the limit");
            Some(message)
        };
        let chunk = || Message::Data(Bytes::from(vec![0u8; 16 * 300]));
        let shutting_down = |m: Option<Message>| match m {
            Some(Message::Error { body, .. }) => body.code == ErrorCode::SHUTTING_DOWN,
            _ => false,
        };
        for i in 0..6 {
            assert!(matches!(admit(1 + i % 2, chunk()), Some(Message::Data(_))));
        }
        // The seventh chunk spends the key: it becomes request 1's error, with the numbers.
        match admit(1, chunk()) {
            Some(Message::Error { service, body }) => {
                assert_eq!(
                    (service, body.code),
                    (Service::FETCH, ErrorCode::SHUTTING_DOWN)
                );
                let used = (start + 6 * 301).to_string();
                let limit = gcm::BLOCK_LIMIT.to_string();
                assert!(
                    body.message.contains(&used) && body.message.contains(&limit),
                    "{body:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(admit(1, chunk()).is_none(), "request 1 has ended");
        assert!(admit(0, Message::Pong(Bytes::from_static(b"p"))).is_none());
        // Request 2's next frame, whatever it is, becomes its error.
        let end = Message::FetchEnd(ferry_protocol::message::FetchEnd {
            bytes: 0,
            digest: [0; 32],
        });
        assert!(shutting_down(admit(2, end)));
        // Up to FINALS errors in all, then the goodbye, once.
        for id in 3..=FINALS as u32 {
            assert!(shutting_down(admit(id, chunk())), "request {id}");
        }
        let goodbye = Message::Error {
            service: Service::HANDSHAKE,
            body: ErrorBody::from_code(ErrorCode::SHUTTING_DOWN),
        };
        match admit(0, goodbye.clone()) {
            Some(Message::Error { service, body }) => {
                assert_eq!(service, Service::HANDSHAKE);
                assert!(body.message.contains("usage limit"), "{body:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(admit(0, goodbye).is_none(), "one goodbye");
        assert!(budget.used <= gcm::BLOCK_LIMIT);
    }

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
            run_shared(Link::new(writer), Queues::new(ctrl_rx, data_rx)).await;
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

    /// Issue 10: on an AES-256-GCM connection a fetch's chunks, read into the pool's slots,
    /// are sealed where they lie by the writer task and handed back to the pool once written;
    /// the client opens exactly the data, and the next read gets the same allocations back.
    #[tokio::test]
    async fn slots_are_sealed_in_place_and_come_back_to_the_pool() {
        use crate::buffers::BufferPool;
        use ferry_protocol::crypto::RecordSuite;

        let (client, server) = Session::dangerous_pair_with_suite(RecordSuite::Aes256Gcm);
        let (mut client_recv, (send, _)) = (client.into_split().1, server.into_split());
        let pool = BufferPool::sealing_in_place(4096, 2, 1024, send.in_place_room());
        let mut buf = pool.get().await;
        let mut content = Vec::new();
        for (i, space) in buf.spaces(4096).into_iter().enumerate() {
            space.fill(i as u8 + 1);
            content.extend_from_slice(space);
        }
        content.truncate(3000);
        buf.set_len(3000);
        let (chunks, held) = buf.into_chunks(1024);
        let sealed: Vec<usize> = chunks.iter().map(|c| c.as_ptr() as usize).collect();
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(4);
        let (data_tx, data_rx) = mpsc::channel(4);
        for chunk in chunks {
            data_tx
                .send((RequestId(1), Message::Data(chunk)))
                .await
                .unwrap();
        }
        drop((held, ctrl_tx, data_tx));
        assert_eq!(pool.kept_slots(), 1, "the slot that took no bytes");
        let recycled = pool.clone();
        let writer = FrameWriter::new(ours, send, 2).recycle(move |slot| recycled.recycle(slot));
        run_shared(Link::new(writer), Queues::new(ctrl_rx, data_rx)).await;
        let mut wire = Vec::new();
        theirs.read_to_end(&mut wire).await.unwrap();
        let mut wire = BytesMut::from(&wire[..]);
        let mut got = Vec::new();
        while let Some(frame) = client_recv.read_frame(&mut wire).unwrap() {
            match frame.message().unwrap() {
                Message::Data(data) => got.extend_from_slice(&data),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, content);
        assert_eq!(pool.kept_slots(), 4, "the empty slot and the three written");
        let mut again = pool.get().await;
        let reused: Vec<usize> = again
            .spaces(4096)
            .iter()
            .map(|s| s.as_ptr() as usize)
            .collect();
        assert!(
            sealed.iter().all(|p| reused.contains(p)),
            "handed back: {sealed:?} {reused:?}"
        );
    }

    /// The reader writes through the writer only while it is idle: not while anything waits
    /// in either queue, and not while the writer task holds an item it has taken but not
    /// written (queues empty, but the item still owed to the wire first). What it writes
    /// leaves in one write, and later queued frames follow it.
    #[tokio::test]
    async fn the_reader_writes_only_through_an_idle_writer() {
        let (client, server) = Session::dangerous_pair_with_fixed_keys(true);
        let (mut client_recv, (send, _)) = (client.into_split().1, server.into_split());
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(4);
        let (data_tx, data_rx) = mpsc::channel(4);
        let mut queues = Queues::new(ctrl_rx, data_rx);
        let link = Link::new(FrameWriter::new(ours, send, 1));
        let ping = |n: u8| Message::Ping(Bytes::from(vec![n]));
        let now = |frames: Vec<Message>| {
            let link = link.clone();
            let (ctrl, data) = (ctrl_tx.clone(), data_tx.clone());
            async move {
                let mut frames = frames;
                let written = link.write_now([&data, &ctrl], RequestId(1), &mut frames);
                written.await.map(|r| r.unwrap())
            }
        };
        // Idle: written at once, both frames together.
        assert_eq!(now(vec![ping(1), ping(2)]).await, Some(()));
        // Something queued (either queue): not idle.
        data_tx.send((RequestId(2), ping(3))).await.unwrap();
        assert_eq!(now(vec![ping(9)]).await, None);
        // Taken by the writer, not yet written: still not idle.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let taken = link.poll_take(&mut queues, &mut cx);
        assert!(matches!(taken, Poll::Ready(Some((RequestId(2), _)))));
        assert_eq!(now(vec![ping(9)]).await, None);
        ctrl_tx.send((RequestId(3), ping(4))).await.unwrap();
        // The writer task writes what it took and what is queued, then is idle again.
        let Poll::Ready(Some(item)) = taken else {
            unreachable!()
        };
        {
            let mut writer = link.writer.lock().await;
            queues.encode(item, writer.batch()).unwrap();
            while let Some(next) = queues.try_recv() {
                queues.encode(next, writer.batch()).unwrap();
            }
            writer.flush().await.unwrap();
        }
        assert!(link.poll_take(&mut queues, &mut cx).is_pending());
        assert_eq!(now(vec![ping(5)]).await, Some(()));
        drop((ctrl_tx, data_tx));
        run_shared(link, queues).await;
        let mut wire = Vec::new();
        theirs.read_to_end(&mut wire).await.unwrap();
        let mut wire = BytesMut::from(&wire[..]);
        let mut got = Vec::new();
        while let Some(frame) = client_recv.read_frame(&mut wire).unwrap() {
            got.push((frame.header.id.0, frame.message().unwrap()));
        }
        assert_eq!(
            got,
            vec![
                (1, ping(1)),
                (1, ping(2)),
                (2, ping(3)),
                (3, ping(4)),
                (1, ping(5))
            ]
        );
    }
}
