//! `ferry ping URL [-c N] [-i INTERVAL] [-s SIZE]`: round-trip times over one connection.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{print_lines, Context};
use crate::cli::PingArgs;
use ferry_client::client::hub::NamedSession;
use ferry_client::error::ClientError;
use ferry_client::Client;

pub async fn run(ctx: &Context, args: PingArgs) -> Result<(), ClientError> {
    let started = Instant::now();
    // A named node's session moves from the relay to a punched path when one appears; each
    // pong says which path it took.
    let session = match args.url.name.is_some() {
        true => Some(NamedSession::new(
            super::register::connect_named(ctx, &args.url).await?,
        )),
        false => None,
    };
    let current = |fallback: &Client| match &session {
        Some(session) => (session.client(), format!(", {}", session.route())),
        None => (fallback.clone(), String::new()),
    };
    let plain = match &session {
        Some(session) => session.client(),
        None => ctx.connect(&args.url).await?,
    };
    let (client, route) = current(&plain);
    let connect_time = started.elapsed();
    ctx.note(&format!(
        "PING {} ({}{route}): {} bytes, connected in {}",
        args.url.authority(),
        client.peer(),
        args.size,
        ms(connect_time)
    ));
    let payload: Bytes = (0..args.size).map(|i| i as u8).collect::<Vec<_>>().into();
    let mut times = Vec::with_capacity(args.count as usize);
    for seq in 1..=args.count {
        if seq > 1 {
            tokio::time::sleep(args.interval).await;
        }
        let (client, route) = current(&plain);
        let rtt = client.ping(payload.clone()).await?;
        print_lines([format!(
            "pong from {}{route}: seq={seq} time={}",
            client.peer(),
            ms(rtt)
        )]);
        times.push(rtt);
    }
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    let avg = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    print_lines([format!(
        "{} pings, {} pongs: min/avg/max = {}/{}/{}",
        args.count,
        times.len(),
        ms(min),
        ms(avg),
        ms(max)
    )]);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
