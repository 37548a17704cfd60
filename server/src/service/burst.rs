//! Bursts: a small response's frames queued back to back, so they leave in one write.

use ferry_protocol::Message;

use super::{ServiceError, Sink};

impl Sink {
    /// Queues frames back to back: room for all of them is taken first and then they are
    /// queued without a wait in between, so a writer that wakes for the first finds the rest
    /// behind it and writes them together, and no other request's frame comes between them.
    /// More frames than the queue can hold go one at a time.
    pub async fn send_all(&self, messages: Vec<Message>) -> Result<(), ServiceError> {
        if messages.len() > self.queue.max_capacity() {
            for message in messages {
                self.send(message).await?;
            }
            return Ok(());
        }
        let permits = self
            .queue
            .reserve_many(messages.len())
            .await
            .map_err(|_| ServiceError::Closed)?;
        for (permit, message) in permits.zip(messages) {
            permit.send((self.id, message));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_protocol::RequestId;
    use tokio::sync::mpsc;

    /// A burst waits for room for all its frames, then lands in one piece: another request's
    /// frame queued while it waits comes before or after it, never inside.
    #[tokio::test]
    async fn a_burst_lands_in_one_piece() {
        let (tx, mut rx) = mpsc::channel(3);
        let burst = Sink::new(RequestId(7), tx.clone());
        let other = Sink::new(RequestId(8), tx);
        other
            .send(Message::Pong(Bytes::from_static(b"a")))
            .await
            .unwrap();
        let frames = || {
            (0..3)
                .map(|i| Message::Pong(Bytes::from(vec![i])))
                .collect::<Vec<_>>()
        };
        let task = tokio::spawn(async move { burst.send_all(frames()).await });
        tokio::task::yield_now().await;
        // The burst cannot start until the queue has room for all three.
        assert!(!task.is_finished());
        let _ = rx.recv().await.unwrap();
        task.await.unwrap().unwrap();
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(id, _)| *id == RequestId(7)), "{got:?}");
        // More frames than the queue holds still arrive, in order.
        let (tx, mut rx) = mpsc::channel(2);
        let sink = Sink::new(RequestId(7), tx);
        let task = tokio::spawn(async move { sink.send_all(frames()).await });
        let mut got = Vec::new();
        while let Some(out) = rx.recv().await {
            got.push(out);
        }
        task.await.unwrap().unwrap();
        assert_eq!(got.len(), 3);
    }
}
