//! Per-connection pool of fetch read buffers.
//!
//! A connection may hold at most `count` read buffers of `size` bytes, whatever the number of
//! fetches in flight. A flat buffer is taken before a file read and returns to the pool when
//! the last chunk sliced from it has been written to the socket (the chunks are `Bytes` whose
//! owner is the [`PooledBuf`]). Buffers are reused, so a steady fetch allocates nothing per
//! read.
//!
//! Where the connection seals data where it lies (AES-256-GCM, issue 10), a buffer is instead
//! a row of *slots*, one per data chunk, each its own allocation with room after it for the
//! record's tag: the file is read straight into them, and the writer seals each slot in place
//! instead of copying it into its batch. A slot must be held by no one else to be sealed in
//! place, so the chunks carry no owner: the buffer's place in the pool is held until its
//! chunks are queued ([`PooledBuf::into_chunks`]), and the writer hands each slot back once
//! written ([`BufferPool::recycle`]); a slot not handed back is simply freed, and a new one
//! allocated in its place. Per connection, fetch memory is then at most `count` buffers being
//! read or queued, plus the data queue and the writer's batch.
//!
//! Deadlock freedom: a fetch only *waits* for a buffer when it holds none that is not already
//! queued for the writer ([`BufferPool::get`]); read-ahead uses [`BufferPool::try_get`]. Every
//! buffer taken is therefore either being read (finishes on its own), being queued (the queue
//! drains as the writer writes) or queued (freed as the writer writes), and the writer depends
//! only on the client.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(crate) struct BufferPool {
    size: usize,
    /// `Some` where buffers are rows of slots, one per chunk.
    slots: Option<SlotShape>,
    permits: Arc<Semaphore>,
    free: Mutex<Vec<Vec<u8>>>,
    free_slots: Mutex<Vec<BytesMut>>,
}

/// The slots of a buffer: `per_buffer` slots of `chunk` bytes, each with `room` free after it.
#[derive(Debug, Clone, Copy)]
struct SlotShape {
    chunk: usize,
    room: usize,
    per_buffer: usize,
    /// Most slots kept for reuse: as many as the pool's buffers hold.
    keep: usize,
}

impl BufferPool {
    /// At most `count` buffers of `size` bytes.
    pub fn new(size: usize, count: usize) -> Arc<Self> {
        Self::build(size, count, None)
    }

    /// [`BufferPool::new`] for a connection whose writer seals data chunks of `chunk` bytes in
    /// place when they have `room` bytes free after them (`SendHalf::in_place_room`): each
    /// buffer is then `size / chunk` slots (at least one) of that shape. Without `room`, flat
    /// buffers as [`BufferPool::new`] gives.
    pub fn sealing_in_place(
        size: usize,
        count: usize,
        chunk: usize,
        room: Option<usize>,
    ) -> Arc<Self> {
        let chunk = chunk.max(1);
        let slots = room.map(|room| {
            let per_buffer = (size / chunk).max(1);
            SlotShape {
                chunk,
                room,
                per_buffer,
                keep: per_buffer.saturating_mul(count.max(1)),
            }
        });
        Self::build(size, count, slots)
    }

    fn build(size: usize, count: usize, slots: Option<SlotShape>) -> Arc<Self> {
        Arc::new(Self {
            size: size.max(1),
            slots,
            permits: Arc::new(Semaphore::new(count.max(1))),
            free: Mutex::new(Vec::new()),
            free_slots: Mutex::new(Vec::new()),
        })
    }

    /// A buffer if one is available now.
    pub fn try_get(self: &Arc<Self>) -> Option<PooledBuf> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.wrap(Some(permit)))
    }

    /// Waits for a buffer. Call only while holding no buffer that is not yet queued.
    pub async fn get(self: &Arc<Self>) -> PooledBuf {
        // The semaphore is never closed; without a permit, the buffer is simply not counted
        // rather than the fetch failing.
        let permit = self.permits.clone().acquire_owned().await.ok();
        self.wrap(permit)
    }

    /// Takes back a slot the writer has sealed in place and written, to read into again.
    /// Anything else (a pool of flat buffers, a buffer of another shape, more than the pool
    /// keeps) is freed.
    pub fn recycle(&self, slot: BytesMut) {
        let Some(shape) = self.slots else { return };
        if slot.capacity() < shape.chunk + shape.room {
            return;
        }
        if let Ok(mut free) = self.free_slots.lock() {
            if free.len() < shape.keep {
                free.push(slot);
            }
        }
    }

    /// Slots kept for reuse.
    #[cfg(test)]
    pub fn kept_slots(&self) -> usize {
        self.free_slots.lock().map(|free| free.len()).unwrap_or(0)
    }

    fn wrap(self: &Arc<Self>, permit: Option<OwnedSemaphorePermit>) -> PooledBuf {
        let storage = match self.slots {
            None => {
                let recycled = self.free.lock().ok().and_then(|mut free| free.pop());
                Storage::Flat(recycled.unwrap_or_else(|| vec![0; self.size]))
            }
            // Taken as a read needs them ([`PooledBuf::spaces`]): a small read takes one.
            Some(_) => Storage::Slots(Vec::new()),
        };
        PooledBuf {
            storage,
            len: 0,
            pool: self.clone(),
            _permit: permit,
        }
    }

    /// An empty slot with room for a chunk and the tag: a recycled one if any.
    fn slot(&self, shape: SlotShape) -> BytesMut {
        let recycled = self.free_slots.lock().ok().and_then(|mut free| free.pop());
        recycled.unwrap_or_else(|| BytesMut::with_capacity(shape.chunk + shape.room))
    }
}

/// Makes `slot` `len` bytes long to read into. A recycled slot keeps the bytes it held (they
/// are overwritten by the read, and only what was read is ever sent), so only bytes it never
/// held are zeroed: a slot reused at the same length costs nothing.
fn fit(slot: &mut BytesMut, len: usize) {
    if slot.len() >= len {
        slot.truncate(len);
    } else {
        slot.resize(len, 0);
    }
}

/// One read buffer; `len` bytes of it are valid. Returns itself to the pool when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    storage: Storage,
    len: usize,
    pool: Arc<BufferPool>,
    // Released after the buffer is back in the free list (fields drop after `drop` runs).
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum Storage {
    Flat(Vec<u8>),
    /// Taken out by [`PooledBuf::into_chunks`], which leaves this empty.
    Slots(Vec<BytesMut>),
}

impl PooledBuf {
    /// Where a read of up to `want` bytes goes, in order: the whole buffer, or as many slots
    /// as `want` fills (at least one, at most a buffer's worth).
    pub fn spaces(&mut self, want: u64) -> Vec<&mut [u8]> {
        match &mut self.storage {
            Storage::Flat(buf) => vec![&mut buf[..]],
            Storage::Slots(slots) => {
                if let Some(shape) = self.pool.slots {
                    let want = usize::try_from(want)
                        .unwrap_or(usize::MAX)
                        .clamp(1, shape.chunk * shape.per_buffer);
                    let needed = want.div_ceil(shape.chunk);
                    while slots.len() < needed {
                        slots.push(self.pool.slot(shape));
                    }
                    // Each slot as long as the part of the read it takes: a small read of a
                    // slot last filled whole zeroes nothing, and the reverse zeroes once.
                    for (i, slot) in slots.iter_mut().enumerate() {
                        fit(slot, want.saturating_sub(i * shape.chunk).min(shape.chunk));
                    }
                }
                slots.iter_mut().map(|slot| &mut slot[..]).collect()
            }
        }
    }

    /// Marks the first `len` bytes (across the slots, in order) as the content.
    pub fn set_len(&mut self, len: usize) {
        let capacity = match &self.storage {
            Storage::Flat(buf) => buf.len(),
            Storage::Slots(slots) => slots.iter().map(|slot| slot.len()).sum(),
        };
        self.len = len.min(capacity);
    }

    /// The content as data chunks of at most `chunk` bytes (a slot is one chunk), and what
    /// holds the buffer's place in the pool until they are queued: drop it only then. Flat
    /// chunks hold the buffer themselves, until written; slots are the chunks, and hold
    /// nothing, so that the writer may seal them where they lie.
    pub fn into_chunks(mut self, chunk: usize) -> (Vec<Bytes>, Option<PooledBuf>) {
        let chunk = chunk.max(1);
        let mut chunks = Vec::new();
        if let Storage::Slots(slots) = &mut self.storage {
            let mut left = self.len;
            for mut slot in std::mem::take(slots) {
                let n = left.min(slot.len());
                left -= n;
                if n == 0 {
                    self.pool.recycle(slot);
                    continue;
                }
                slot.truncate(n);
                chunks.push(slot.freeze());
            }
            return (chunks, Some(self));
        }
        let len = self.len;
        let whole = Bytes::from_owner(Flat(self));
        let mut at = 0;
        while at < len {
            let end = (at + chunk).min(len);
            chunks.push(whole.slice(at..end));
            at = end;
        }
        (chunks, None)
    }
}

/// A flat buffer as the owner of the chunks sliced from it.
struct Flat(PooledBuf);

impl AsRef<[u8]> for Flat {
    fn as_ref(&self) -> &[u8] {
        match &self.0.storage {
            Storage::Flat(buf) => &buf[..self.0.len],
            Storage::Slots(_) => &[],
        }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        match &mut self.storage {
            Storage::Flat(buf) => {
                if let Ok(mut free) = self.pool.free.lock() {
                    free.push(std::mem::take(buf));
                }
            }
            Storage::Slots(slots) => {
                for slot in slots.drain(..) {
                    self.pool.recycle(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_come_back_when_the_last_slice_is_dropped() {
        let pool = BufferPool::new(1024, 2);
        let mut a = pool.get().await;
        a.spaces(3)[0][..3].copy_from_slice(b"abc");
        a.set_len(3);
        let (chunks, held) = a.into_chunks(2);
        assert!(held.is_none(), "flat chunks hold their buffer");
        assert_eq!(chunks, [&b"ab"[..], &b"c"[..]]);
        let _b = pool.try_get().expect("second buffer");
        assert!(pool.try_get().is_none(), "at most two");
        let last = chunks[1].clone();
        drop(chunks);
        assert!(pool.try_get().is_none(), "a chunk still holds the first");
        drop(last);
        let mut again = pool.try_get().expect("returned");
        assert_eq!(again.spaces(1)[0].len(), 1024);
        assert_eq!(
            pool.free.lock().unwrap().len(),
            0,
            "reused, not reallocated"
        );
    }

    /// Issue 10: a buffer of slots is read into slot by slot; its chunks are the slots
    /// themselves, each held by no one else and with room for the tag after it, so that the
    /// writer may seal it in place; the buffer's place is held until the chunks are queued;
    /// and slots the writer hands back are read into again, not reallocated.
    #[tokio::test]
    async fn slots_are_read_into_sealed_where_they_lie_and_come_back() {
        let pool = BufferPool::sealing_in_place(32, 2, 8, Some(16));
        let mut a = pool.get().await;
        let mut at = 0;
        for space in a.spaces(u64::MAX) {
            assert_eq!(space.len(), 8);
            for byte in space.iter_mut() {
                *byte = b'a' + at;
                at += 1;
            }
        }
        assert_eq!(at, 32, "four slots of 8");
        a.set_len(10);
        let (chunks, held) = a.into_chunks(8);
        assert_eq!(chunks, [&b"abcdefgh"[..], &b"ij"[..]]);
        assert_eq!(
            pool.kept_slots(),
            2,
            "the slots that took no bytes, at once"
        );
        let _b = pool.try_get().expect("second buffer");
        assert!(pool.try_get().is_none(), "held until queued");
        drop(held);
        assert!(pool.try_get().is_some(), "queued: the place is free");
        let kept = pool.kept_slots();
        let mut sealed = Vec::new();
        for chunk in chunks {
            let mut slot = chunk.try_into_mut().expect("held by no one else");
            assert!(slot.capacity() - slot.len() >= 16, "room for the tag");
            slot.extend_from_slice(&[0xee; 16]);
            sealed.push(slot.as_ptr() as usize);
            pool.recycle(slot);
        }
        assert_eq!(pool.kept_slots(), kept + 2, "handed back");
        // The writer's hand-back, then the next read gets those very allocations back.
        let mut c = pool.get().await;
        let reused: Vec<usize> = c.spaces(32).iter().map(|s| s.as_ptr() as usize).collect();
        assert!(
            sealed.iter().all(|p| reused.contains(p)),
            "{sealed:?} {reused:?}"
        );
        assert!(c.spaces(32).iter().all(|s| s.len() == 8));
        // A small read takes one slot, not a buffer's worth.
        let small = BufferPool::sealing_in_place(32, 1, 8, Some(16));
        assert_eq!(small.get().await.spaces(5).len(), 1);
        // A flat pool keeps no slots, nor does a pool of slots keep one too small.
        let flat = BufferPool::new(32, 1);
        flat.recycle(BytesMut::with_capacity(64));
        assert_eq!(flat.kept_slots(), 0);
        let left = pool.kept_slots();
        pool.recycle(BytesMut::with_capacity(8));
        assert_eq!(pool.kept_slots(), left);
    }
}
