//! Per-connection pool of fetch read buffers.
//!
//! A connection may hold at most `count` read buffers of `size` bytes, whatever the number of
//! fetches in flight: a buffer is taken before a file read and returns to the pool when the
//! last chunk sliced from it has been written to the socket (the chunks are `Bytes` whose owner
//! is the [`PooledBuf`]). Buffers are reused, so a steady fetch allocates nothing per read.
//!
//! Deadlock freedom: a fetch only *waits* for a buffer when it holds none that is not already
//! queued for the writer ([`BufferPool::get`]); read-ahead uses [`BufferPool::try_get`]. Every
//! buffer taken is therefore either being read (finishes on its own) or queued (freed as the
//! writer writes), and the writer depends only on the client.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub(crate) struct BufferPool {
    size: usize,
    permits: Arc<Semaphore>,
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// At most `count` buffers of `size` bytes.
    pub fn new(size: usize, count: usize) -> Arc<Self> {
        Arc::new(Self {
            size: size.max(1),
            permits: Arc::new(Semaphore::new(count.max(1))),
            free: Mutex::new(Vec::new()),
        })
    }

    /// A buffer if one is available now.
    pub fn try_get(self: &Arc<Self>) -> Option<PooledBuf> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.wrap(permit))
    }

    /// Waits for a buffer. Call only while holding no buffer that is not yet queued.
    pub async fn get(self: &Arc<Self>) -> PooledBuf {
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => self.wrap(permit),
            // The semaphore is never closed; fall back to an unpooled buffer rather than fail.
            Err(_) => PooledBuf {
                buf: vec![0; self.size],
                len: 0,
                pool: None,
                _permit: None,
            },
        }
    }

    fn wrap(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> PooledBuf {
        let recycled = self.free.lock().ok().and_then(|mut free| free.pop());
        PooledBuf {
            buf: recycled.unwrap_or_else(|| vec![0; self.size]),
            len: 0,
            pool: Some(self.clone()),
            _permit: Some(permit),
        }
    }
}

/// One read buffer; `len` bytes of it are valid. Returns itself to the pool when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Option<Arc<BufferPool>>,
    // Released after the buffer is back in the free list (fields drop after `drop` runs).
    _permit: Option<OwnedSemaphorePermit>,
}

impl PooledBuf {
    /// The whole buffer, to read into.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Marks the first `len` bytes as the content.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len());
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            if let Ok(mut free) = pool.free.lock() {
                free.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn buffers_come_back_when_the_last_slice_is_dropped() {
        let pool = BufferPool::new(1024, 2);
        let mut a = pool.get().await;
        a.space()[..3].copy_from_slice(b"abc");
        a.set_len(3);
        let bytes = Bytes::from_owner(a);
        let slice = bytes.slice(1..);
        let _b = pool.try_get().expect("second buffer");
        assert!(pool.try_get().is_none(), "at most two");
        drop(bytes);
        assert!(pool.try_get().is_none(), "a slice still holds the first");
        assert_eq!(slice.as_ref(), b"bc");
        drop(slice);
        let again = pool.try_get().expect("returned");
        assert_eq!(again.buf.len(), 1024);
        assert_eq!(
            pool.free.lock().unwrap().len(),
            0,
            "reused, not reallocated"
        );
    }
}
