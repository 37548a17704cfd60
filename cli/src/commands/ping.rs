//! `ferry ping URL [-c N] [-i INTERVAL] [-s SIZE]`: round-trip times over one connection.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{print_lines, Context};
use crate::cli::PingArgs;
use ferry_client::error::ClientError;

pub async fn run(ctx: &Context, args: PingArgs) -> Result<(), ClientError> {
    let started = Instant::now();
    let (client, route) = if args.url.name.is_some() {
        let named = super::register::connect_named(ctx, &args.url).await?;
        (named.connected.client, format!(", {}", named.route))
    } else {
        (ctx.connect(&args.url).await?, String::new())
    };
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
