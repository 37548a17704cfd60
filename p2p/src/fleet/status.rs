//! `fleet status` (spec/P2P.md §8.6): asks the seed addresses for their STATUS as an observer,
//! then every member their answers list, and reports each member by its own account, or, for
//! one that does not answer, by the freshest "last heard" another member reported.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::channel::ChannelId;
use super::wire::{self, Message, Role, Status};

/// One member as the crawl saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub addr: SocketAddr,
    /// Its own STATUS, if it answered.
    pub status: Option<Status>,
    /// The smallest age another member reported for it, and who reported it.
    pub heard: Option<(u32, SocketAddr)>,
}

/// How many times an address is asked before it counts as silent.
const ATTEMPTS: u32 = 3;
/// Wait for one answer.
const ANSWER_WITHIN: Duration = Duration::from_millis(400);
/// Most members asked in one crawl.
const MAX_CRAWL: usize = 4096;

/// Crawls the fleet of `channel` from `seeds`; gives up after `deadline` in all.
pub async fn crawl(
    channel: ChannelId,
    seeds: &[SocketAddr],
    deadline: Duration,
) -> std::io::Result<Vec<Seen>> {
    let bind: SocketAddr = if seeds.first().is_some_and(SocketAddr::is_ipv6) {
        "[::]:0".parse().map_err(std::io::Error::other)?
    } else {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    };
    let socket = UdpSocket::bind(bind).await?;
    let request = Message::status_request(Status {
        channel,
        role: Role::Observer,
        latest: 0,
        running: 0,
        failed: 0,
        swarm_port: 0,
        name: "fleet status".into(),
        members: Vec::new(),
    });
    let mut seen: HashMap<SocketAddr, Seen> = HashMap::new();
    // Address -> (attempts, last sent, transaction).
    let mut asking: HashMap<SocketAddr, (u32, Instant, u32)> = HashMap::new();
    let mut queue: VecDeque<SocketAddr> = seeds.iter().copied().collect();
    let give_up = Instant::now() + deadline;
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    loop {
        let now = Instant::now();
        while let Some(addr) = queue.pop_front() {
            if seen.len() >= MAX_CRAWL || asking.contains_key(&addr) {
                continue;
            }
            seen.entry(addr).or_insert(Seen {
                addr,
                status: None,
                heard: None,
            });
            let tx = rand::random();
            asking.insert(addr, (1, now, tx));
            let _ = socket.send_to(&request.to_datagram(tx), addr).await;
        }
        // Retry the silent ones; stop when nobody is left to wait for.
        let mut waiting = false;
        for (addr, (attempts, sent, tx)) in asking.iter_mut() {
            let answered = seen.get(addr).is_some_and(|s| s.status.is_some());
            if answered {
                continue;
            }
            if now.duration_since(*sent) >= ANSWER_WITHIN {
                if *attempts >= ATTEMPTS {
                    continue;
                }
                *attempts += 1;
                *sent = now;
                *tx = rand::random();
                let _ = socket.send_to(&request.to_datagram(*tx), *addr).await;
            }
            waiting = true;
        }
        if !waiting || now >= give_up {
            break;
        }
        let wait = tokio::time::timeout(Duration::from_millis(50), socket.recv_from(&mut buf));
        let Ok(Ok((len, from))) = wait.await else {
            continue;
        };
        let Some(Ok((tx, Message::StatusResponse(status)))) = Message::from_datagram(&buf[..len])
        else {
            continue;
        };
        if asking.get(&from).map(|a| a.2) != Some(tx) || status.channel != channel {
            continue;
        }
        for member in &status.members {
            let entry = seen.entry(member.addr).or_insert(Seen {
                addr: member.addr,
                status: None,
                heard: None,
            });
            if member.age_s != wire::NEVER && entry.heard.is_none_or(|(age, _)| member.age_s < age)
            {
                entry.heard = Some((member.age_s, from));
            }
            if !asking.contains_key(&member.addr) {
                queue.push_back(member.addr);
            }
        }
        if let Some(entry) = seen.get_mut(&from) {
            entry.status = Some(status);
        }
    }
    let mut out: Vec<Seen> = seen.into_values().collect();
    out.sort_by(|a, b| {
        let name = |s: &Seen| s.status.as_ref().map(|s| s.name.clone());
        (name(a).is_none(), name(a), a.addr).cmp(&(name(b).is_none(), name(b), b.addr))
    });
    Ok(out)
}

/// The table `fleet status` prints, one member a line.
pub fn render(seen: &[Seen]) -> String {
    let mut out = format!(
        "{:<20} {:<22} {:>8} {:>8} {:<12} {}\n",
        "NAME", "ADDRESS", "RUNNING", "LATEST", "LAST APPLY", "LAST HEARD"
    );
    let version = |v: u64| {
        if v == 0 {
            "-".to_owned()
        } else {
            v.to_string()
        }
    };
    for s in seen {
        let line = match &s.status {
            Some(st) => {
                let name = match st.role {
                    Role::Publisher => format!("{} (publisher)", st.name),
                    _ => st.name.clone(),
                };
                let apply = if st.failed != 0 {
                    format!("failed v{}", st.failed)
                } else if st.running != 0 {
                    "ok".to_owned()
                } else {
                    "-".to_owned()
                };
                format!(
                    "{:<20} {:<22} {:>8} {:>8} {:<12} now",
                    name,
                    s.addr.to_string(),
                    version(st.running),
                    version(st.latest),
                    apply
                )
            }
            None => {
                let heard = match s.heard {
                    Some((age, by)) => format!("{age}s ago (by {by}); no answer now"),
                    None => "never; no answer".to_owned(),
                };
                format!(
                    "{:<20} {:<22} {:>8} {:>8} {:<12} {}",
                    "?",
                    s.addr.to_string(),
                    "?",
                    "?",
                    "?",
                    heard
                )
            }
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
