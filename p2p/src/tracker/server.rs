//! The tracker's tokio shell: one UDP socket, the sans-IO [`Tracker`] behind it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Tracker, TrackerConfig, MAX_DATAGRAM};

/// Binds `listen` and serves until `cancel` fires. Returns the bound address through `bound`
/// before serving.
pub async fn serve(
    listen: SocketAddr,
    config: TrackerConfig,
    cancel: CancellationToken,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let socket = UdpSocket::bind(listen).await?;
    bound(socket.local_addr()?);
    let mut tracker = Tracker::new(config, Instant::now().into_std());
    // Larger than MAX_DATAGRAM so an oversized datagram is seen as such (and ignored), not cut.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(r) => r,
                    // ICMP errors from earlier sends surface here on some systems; keep serving.
                    Err(e) => {
                        tracing::debug!(error = %e, "tracker recv failed");
                        continue;
                    }
                };
                if let Some(reply) = tracker.handle_datagram(&buf[..len], from, Instant::now().into_std()) {
                    if let Err(e) = socket.send_to(&reply, from).await {
                        tracing::debug!(error = %e, %from, "tracker send failed");
                    }
                }
            }
            _ = sweep.tick() => tracker.expire(Instant::now().into_std()),
        }
    }
}
