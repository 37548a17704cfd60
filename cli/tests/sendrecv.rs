//! `ferry send` and `ferry receive` (spec §3.13) end to end: both are the `ferry` binary, each
//! with a HOME of its own; the hub runs in this process on 127.0.0.1. Every wait is for
//! something observable (a line the receiver prints, a partial file's length) and bounded by a
//! generous deadline that only a failure reaches.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{data, wait_for, Env, Run};
use ferry_hub::{Hub, HubConfig};
use ferry_protocol::identity::{Identity, NodeId};

/// Generous bound on any one wait: reached only when something is broken.
const DEADLINE: Duration = Duration::from_secs(60);

/// An in-process hub, in a runtime of its own.
struct World {
    _runtime: tokio::runtime::Runtime,
    hub: SocketAddr,
    hub_id: NodeId,
    tap: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
}

impl World {
    fn new() -> Self {
        Self::with_limits(ferry_hub::HubLimits::default())
    }

    fn with_limits(limits: ferry_hub::HubLimits) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = HubConfig::new(
            Identity::from_secret([210; 32]),
            "127.0.0.1:0".parse().unwrap(),
        );
        config.limits = limits;
        let hub = runtime.block_on(Hub::bind(config)).unwrap();
        let addr = hub.local_addr().unwrap();
        let hub_id = hub.id();
        let tap = hub.tap_relays();
        runtime.spawn(hub.run(std::future::pending()));
        Self {
            _runtime: runtime,
            hub: addr,
            hub_id,
            tap,
        }
    }

    /// `NAME@ferry://HUBID@127.0.0.1:PORT/`.
    fn at(&self, name: &str) -> String {
        format!(
            "{name}@ferry://{}@127.0.0.1:{}/",
            self.hub_id,
            self.hub.port()
        )
    }

    fn relayed(&mut self) -> Vec<u8> {
        let mut seen = Vec::new();
        while let Ok(chunk) = self.tap.try_recv() {
            seen.extend_from_slice(&chunk);
        }
        seen
    }
}

/// The node id `ferry` uses in `env` (created on first use).
fn id_of(env: &Env) -> NodeId {
    let run = env.run(&["id"]);
    run.ok();
    run.stdout.trim().parse().unwrap()
}

/// Lets `sender` send to `env` without a question, as `ferry-server authorize` would.
fn authorise(env: &Env, sender: NodeId) {
    let dir = env.home.path().join("config/ferry");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("authorized_clients");
    std::fs::write(&path, format!("{sender} bob write\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A running `ferry receive`: its stderr lines arrive on a channel as they are printed.
struct Receiving {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: std::thread::JoinHandle<String>,
}

impl Receiving {
    fn start(env: &Env, args: &[&str]) -> Self {
        let mut child = env
            .command()
            .arg("receive")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let mut receiving = Self {
            child,
            lines,
            seen: Vec::new(),
            stdout,
        };
        receiving.expect("waiting for an offer");
        receiving
    }

    /// Waits for a stderr line containing `text` and returns it.
    #[track_caller]
    fn expect(&mut self, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("the receiver never printed {text:?}: {:#?}", self.seen);
                }
            }
        }
    }

    /// `ferry://ID@127.0.0.1:PORT/`, from the line the receiver printed.
    fn direct(&mut self) -> String {
        let line = self.expect("directly: ferry send FILE ");
        line.rsplit(' ').next().unwrap().to_owned()
    }

    /// Waits for the receiver to end by itself.
    #[track_caller]
    fn finish(mut self) -> Run {
        let ok = wait_for(DEADLINE, || self.child.try_wait().unwrap().is_some());
        if !ok {
            let _ = self.child.kill();
        }
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout.join().unwrap(),
            stderr: self.seen.join("\n"),
        };
        assert!(ok, "the receiver did not end: {run:#?}");
        run
    }

    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen
    }
}

fn register(world: &World, env: &Env, name: &str) {
    env.run(&["register", &world.at(name)]).ok();
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn send_reaches_a_receiver_behind_dead_hints_through_the_relay_byte_identical() {
    let mut world = World::new();
    let (alice, bob) = (Env::new(), Env::new());
    register(&world, &alice, "alice");
    authorise(&alice, id_of(&bob));
    let out = alice.home.path().join("in");
    // No port and no punch: the hub's only hint is the reflected address of alice's control
    // connection, which nothing listens on, so the sender must go through the relay.
    let receiving = Receiving::start(
        &alice,
        &[
            &world.at("alice"),
            "--relay-only",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let files = bob.home.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (a, b) = (data(700_000, 3), data(1_234, 4));
    std::fs::write(files.join("a.bin"), &a).unwrap();
    std::fs::write(files.join("b.txt"), &b).unwrap();
    // A short connect timeout keeps the punch attempt (which alice does not answer) short.
    let send = bob.run(&[
        "-v",
        "--connect-timeout",
        "3s",
        "send",
        files.join("a.bin").to_str().unwrap(),
        files.join("b.txt").to_str().unwrap(),
        &world.at("alice"),
    ]);
    send.ok();
    assert!(send.stderr.contains("asking the hub to relay"), "{send:?}");
    assert!(send.stderr.contains("route=relayed"), "{send:?}");
    let received = receiving.finish();
    received.ok();
    assert!(
        received.stderr.contains("accepted automatically"),
        "{received:?}"
    );
    assert!(received.stdout.contains("received a.bin"), "{received:?}");
    assert_eq!(
        std::fs::read(out.join("a.bin")).unwrap(),
        a,
        "byte-identical"
    );
    assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b);
    assert_eq!(listing(&out), ["a.bin", "b.txt"], "no partial left");
    let relayed = world.relayed();
    assert!(relayed.len() > a.len(), "{} bytes relayed", relayed.len());
    for probe in a.chunks(4096).take(20) {
        assert!(
            !relayed.windows(32).any(|w| w == &probe[..32]),
            "the hub saw plaintext"
        );
    }
}

#[test]
fn from_accepts_its_sender_at_once_and_a_tree_arrives_whole() {
    let world = World::new();
    let (alice, bob) = (Env::new(), Env::new());
    register(&world, &alice, "alice");
    register(&world, &bob, "bob");
    let out = alice.home.path().join("in");
    let receiving = Receiving::start(
        &alice,
        &[
            &world.at("alice"),
            "--from",
            &world.at("bob"),
            "--listen",
            "127.0.0.1:0",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let tree = bob.home.path().join("photos");
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::create_dir_all(tree.join("2024")).unwrap();
    std::fs::write(tree.join("2024/x.jpg"), data(50_000, 5)).unwrap();
    std::fs::write(tree.join("y.jpg"), data(10, 6)).unwrap();
    let send = bob.run(&[
        "-v",
        "send",
        "-r",
        tree.to_str().unwrap(),
        &world.at("alice"),
    ]);
    send.ok();
    assert!(send.stderr.contains("route=direct"), "{send:?}");
    let received = receiving.finish();
    received.ok();
    assert!(
        received.stderr.contains("accepted automatically"),
        "{received:?}"
    );
    let got = out.join("photos");
    assert_eq!(
        std::fs::read(got.join("2024/x.jpg")).unwrap(),
        data(50_000, 5)
    );
    assert_eq!(std::fs::read(got.join("y.jpg")).unwrap(), data(10, 6));
    assert!(got.join("empty").is_dir());
}

#[test]
fn an_unknown_sender_is_declined_without_a_terminal_and_nothing_is_written() {
    let world = World::new();
    let (alice, mallory) = (Env::new(), Env::new());
    register(&world, &alice, "alice");
    let out = alice.home.path().join("in");
    let mut receiving = Receiving::start(
        &alice,
        &[
            &world.at("alice"),
            "--listen",
            "127.0.0.1:0",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let file = mallory.home.path().join("gift.exe");
    std::fs::write(&file, b"not wanted").unwrap();
    let send = mallory.run(&["send", file.to_str().unwrap(), &world.at("alice")]);
    send.code(1);
    assert!(send.stderr.contains("alice declined the offer"), "{send:?}");
    assert!(send.stderr.contains("not authorised"), "{send:?}");
    assert!(send.stderr.contains("(offer declined)"), "{send:?}");
    let line = receiving.expect("declined an offer");
    assert!(line.contains(&id_of(&mallory).to_string()), "{line}");
    assert!(line.contains("no terminal"), "{line}");
    receiving.stop();
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

/// A hostile sender (this test, speaking the protocol itself) offers names that climb out,
/// start at the root or pass through a link; each is refused with INVALID_PATH, an existing
/// file is not taken over, and an upload of anything not accepted is NOT_OFFERED.
#[test]
fn hostile_names_are_refused_and_only_accepted_items_may_be_uploaded() {
    use ferry_client::client::{Client, ClientConfig};
    use ferry_protocol::digest::fetch_digest;
    use ferry_protocol::message::{OfferItem, OfferRequest, OfferResponse, PutRequest};
    use ferry_protocol::ErrorCode;

    let (alice, bob) = (Env::new(), Env::new());
    let me = Identity::from_secret([77; 32]);
    authorise(&alice, me.id());
    let out = alice.home.path().join("in");
    let outside = alice.home.path().join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    std::fs::write(out.join("mine.txt"), b"alice's").unwrap();
    let mut receiving = Receiving::start(
        &alice,
        &["--listen", "127.0.0.1:0", "-o", out.to_str().unwrap()],
    );
    let url: ferry_common::url::FerryUrl = receiving.direct().parse().unwrap();
    let item = |path: &str| OfferItem {
        path: path.into(),
        size: 2,
        mode: 0o644,
        flags: 0,
        digest: fetch_digest(b"hi"),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = ClientConfig::new(ferry_protocol::Key::generate())
            .identity(me.clone())
            .server_id(url.server_id.unwrap());
        let client = Client::connect_url(&url, config).await.unwrap().client;
        let offer = OfferRequest {
            items: vec![
                item("../x"),
                item("/etc/x"),
                item("link/x"),
                item("mine.txt"),
                item("ok.txt"),
            ],
            set: None,
        };
        let answer = client.offer(offer, DEADLINE).await.unwrap();
        assert_eq!(
            answer.codes,
            [
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                ErrorCode::ALREADY_EXISTS,
                OfferResponse::ACCEPTED,
            ]
        );
        for (path, flags) in [
            ("../x", 0),
            ("mine.txt", 1),
            ("other.txt", 0),
            ("ok.txt", 1),
        ] {
            let request = PutRequest::new(path, 2, 0o644, flags, fetch_digest(b"hi")).unwrap();
            let refused = client.put(request).await.unwrap_err();
            assert_eq!(
                refused.remote_code(),
                Some(ErrorCode::NOT_OFFERED),
                "{path}: {refused}"
            );
        }
        let request = PutRequest::new("ok.txt", 2, 0o644, 0, fetch_digest(b"hi")).unwrap();
        let mut upload = client.put(request).await.unwrap();
        upload.send(bytes::Bytes::from_static(b"hi")).await.unwrap();
        let end = upload
            .finish(ferry_protocol::message::PutEnd {
                bytes: 2,
                digest: fetch_digest(b"hi"),
            })
            .await
            .unwrap();
        assert_eq!(end.bytes, 2);
    });
    let received = receiving.finish();
    received.ok();
    assert_eq!(std::fs::read(out.join("ok.txt")).unwrap(), b"hi");
    assert_eq!(std::fs::read(out.join("mine.txt")).unwrap(), b"alice's");
    assert!(
        listing(&outside).is_empty(),
        "nothing went through the link"
    );
    assert!(!alice.home.path().join("x").exists());
    drop(bob);
}

/// Forwards to `upstream`, but only the first `budget` bytes from the client: then the upload
/// stalls there, as a link that died would leave it.
fn stalling_proxy(upstream: SocketAddr, budget: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        let mut server = TcpStream::connect(upstream).unwrap();
        let (mut client_r, mut server_w) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut left = budget;
            let mut buf = [0u8; 16 * 1024];
            while left > 0 {
                let n = match client_r.read(&mut buf[..left.min(16 * 1024)]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if server_w.write_all(&buf[..n]).is_err() {
                    break;
                }
                left -= n;
            }
            // Hold the connection until the client goes, then close the server's side.
            while matches!(client_r.read(&mut buf), Ok(n) if n > 0) {}
            let _ = server_w.shutdown(std::net::Shutdown::Both);
        });
        let _ = std::io::copy(&mut server, &mut client);
    });
    addr
}

fn partial(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".ferry-up-"))
}

#[test]
fn a_killed_send_resumes_where_it_stopped_and_sends_no_byte_twice() {
    let (alice, bob) = (Env::new(), Env::new());
    authorise(&alice, id_of(&bob));
    let out = alice.home.path().join("in");
    let mut receiving = Receiving::start(
        &alice,
        &["--listen", "127.0.0.1:0", "-o", out.to_str().unwrap()],
    );
    let direct: ferry_common::url::FerryUrl = receiving.direct().parse().unwrap();
    let receiver_addr: SocketAddr = direct.hints()[0].authority().parse().unwrap();
    let content = data(6 << 20, 9);
    let file = bob.home.path().join("big.bin");
    std::fs::write(&file, &content).unwrap();

    // First run through a link that stops after 2 MiB: the receiver keeps what came.
    let proxy = stalling_proxy(receiver_addr, 2 << 20);
    let via_proxy = format!("ferry://{}@{proxy}/", direct.server_id.unwrap());
    let mut first = bob
        .command()
        .args(["send", file.to_str().unwrap(), &via_proxy])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stalled = wait_for(DEADLINE, || {
        partial(&out).is_some_and(|p| std::fs::metadata(p).unwrap().len() >= 1 << 20)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(stalled, "the partial never reached 1 MiB");
    receiving.expect("waiting for it to send again");
    let kept = std::fs::metadata(partial(&out).unwrap()).unwrap().len();
    assert!(kept < content.len() as u64);

    // Sent again directly: it continues at the partial's end.
    let again = bob.run(&["send", file.to_str().unwrap(), &receiving.direct()]);
    again.ok();
    assert!(again.stderr.contains("resumed at"), "{again:?}");
    let received = receiving.finish();
    received.ok();
    let now = content.len() as u64 - kept;
    assert!(
        received
            .stdout
            .contains(&format!("resumed at {kept} ({now} received now)")),
        "only the missing {now} bytes came: {received:?}"
    );
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), content);
    assert_eq!(listing(&out), ["big.bin"]);
}

/// A hub that lies: it names alice's id but relays to mallory, who runs a receiver that would
/// take the file. The sender requires the resolved id end to end, so it refuses mallory.
#[test]
fn a_lying_hub_cannot_hand_the_files_to_another_receiver() {
    let (mallory, bob) = (Env::new(), Env::new());
    authorise(&mallory, id_of(&bob));
    let out = mallory.home.path().join("in");
    let mut receiving = Receiving::start(
        &mallory,
        &["--listen", "127.0.0.1:0", "-o", out.to_str().unwrap()],
    );
    let direct: ferry_common::url::FerryUrl = receiving.direct().parse().unwrap();
    let mallory_addr: SocketAddr = direct.hints()[0].authority().parse().unwrap();
    let alice = Identity::from_secret([5; 32]).id();
    let liar = Identity::from_secret([6; 32]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hub = runtime.block_on(lying_hub(liar.clone(), alice, mallory_addr));

    let file = bob.home.path().join("secret.txt");
    std::fs::write(&file, b"for alice only").unwrap();
    let target = format!("alice@ferry://{}@{hub}/", liar.id());
    let send = bob.run(&["-v", "send", file.to_str().unwrap(), &target]);
    send.code(3);
    assert!(
        send.stderr.contains(&alice.to_string())
            && send.stderr.contains(&direct.server_id.unwrap().to_string()),
        "the refusal names both ids: {send:?}"
    );
    let seen = receiving.stop();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("accepted") || l.contains("declined")),
        "mallory saw no offer: {seen:?}"
    );
    assert!(listing(&out).is_empty());
}

/// Serves RESOLVE (alice's id, online, no hints), relays every RELAY to `to` and refuses
/// anything else.
async fn lying_hub(identity: Identity, claims: NodeId, to: SocketAddr) -> SocketAddr {
    use bytes::BytesMut;
    use ferry_hub::wire;
    use ferry_protocol::noise::{AcceptConfig, ServerIdentityConfig};
    use ferry_protocol::{ErrorBody, ErrorCode, FrameType, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let identity = identity.clone();
            tokio::spawn(async move {
                let accept = AcceptConfig {
                    psk: None,
                    identity: Some(ServerIdentityConfig::new(identity)),
                };
                let Ok((mut session, _, mut buf)) =
                    ferry_protocol::tokio::server_accept(&mut stream, accept).await
                else {
                    return;
                };
                loop {
                    let frame = match session.read_frame(&mut buf) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => match stream.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => continue,
                        },
                        Err(_) => return,
                    };
                    let h = frame.header;
                    let mut out = BytesMut::new();
                    let body = if h.kind == FrameType::PING {
                        // The sender measures its round trip before it asks for a punch.
                        session
                            .write_frame(FrameType::PONG, h.service, h.id, &frame.body, &mut out)
                            .unwrap();
                        stream.write_all(&out).await.unwrap();
                        continue;
                    } else if h.kind != FrameType::REQUEST {
                        continue;
                    } else if h.service == wire::RESOLVE {
                        wire::ResolveResponse {
                            id: claims,
                            online: true,
                            hints: Vec::new(),
                        }
                        .to_bytes()
                    } else if h.service == wire::RELAY {
                        wire::RelayResponse { peer: claims }.to_bytes()
                    } else {
                        // Punching and the rest: refused at once, so the sender moves on.
                        let refusal = ErrorBody::new(ErrorCode::UNKNOWN_REQUEST, "no");
                        let message = Message::Error {
                            service: h.service,
                            body: refusal,
                        };
                        session.write_message(h.id, &message, &mut out).unwrap();
                        stream.write_all(&out).await.unwrap();
                        continue;
                    };
                    session
                        .write_frame(FrameType::RESPONSE, h.service, h.id, &body, &mut out)
                        .unwrap();
                    stream.write_all(&out).await.unwrap();
                    if h.service == wire::RELAY {
                        // From here the connection is the raw relayed stream, spliced to `to`.
                        let mut far = tokio::net::TcpStream::connect(to).await.unwrap();
                        far.write_all(&buf).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut far).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A receiver in this process (so that its punching can be paused), present at the hub as
/// `name` with a dead hint: it takes every offer and reports what it was offered and stored.
struct InProcess {
    presence: ferry_hub::Presence,
    events: mpsc::Receiver<String>,
}

fn receive_in_process(world: &World, name: &str, dir: &Path) -> InProcess {
    use ferry_server::receive::{Event, Receiver};
    let identity = Identity::from_secret([211; 32]);
    let (hub, hub_id) = (world.hub, world.hub_id);
    let runtime = &world._runtime;
    runtime.block_on(async {
        let mut conn = ferry_hub::HubConn::connect_addr(hub, Some(hub_id), &identity)
            .await
            .unwrap();
        conn.register(name, None).await.unwrap();
    });
    let (receiver, mut events) =
        Receiver::open(dir, identity.clone(), ferry_server::Limits::default()).unwrap();
    let receiver = std::sync::Arc::new(receiver);
    let hints = vec![ferry_common::url::Hint {
        host: "127.0.0.1".into(),
        port: hub.port(),
    }];
    let mut config = ferry_hub::PresenceConfig::new(hints, Some(hub_id), identity, name.into());
    // Nothing listens there: only a punch or the relay reaches this receiver.
    config.addrs = vec![TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()];
    let _guard = runtime.enter();
    let (mut acceptor, presence) = ferry_hub::spawn_presence(config);
    presence.pause_punching(true);
    runtime.spawn(async move {
        use ferry_protocol::transport::Acceptor;
        while let Ok((stream, from)) = acceptor.accept().await {
            let receiver = receiver.clone();
            tokio::spawn(async move { receiver.serve(stream, from).await });
        }
    });
    let (tx, seen) = mpsc::channel();
    runtime.spawn(async move {
        while let Some(event) = events.recv().await {
            let line = match event {
                Event::Offer(offer) => {
                    let line = format!("offer of {} items", offer.items.len());
                    offer.accept();
                    line
                }
                Event::Stored(stored) => format!("stored {}", stored.item.path),
                Event::Ended(_) => "ended".to_owned(),
                Event::Continued(_) | Event::Receiving(_) => continue,
            };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    runtime.block_on(async {
        let asker = Identity::from_secret([212; 32]);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut conn = ferry_hub::HubConn::connect_addr(hub, Some(hub_id), &asker)
                .await
                .unwrap();
            if conn.resolve(name).await.map(|r| r.online).unwrap_or(false) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} never came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    InProcess {
        presence,
        events: seen,
    }
}

#[test]
fn a_relayed_send_moves_to_the_punched_path_mid_file_and_is_byte_identical() {
    // 1 MB/s through the relay: the 8 MiB file cannot finish there in the ~2 s the sender's
    // session takes to punch once the receiver answers again.
    let limits = ferry_hub::HubLimits {
        relay_rate: 1_000_000,
        ..ferry_hub::HubLimits::default()
    };
    let mut world = World::with_limits(limits);
    let inbox = tempfile::tempdir().unwrap();
    let carol = receive_in_process(&world, "carol", inbox.path());

    let bob = Env::new();
    let content = data(8 << 20, 31);
    let file = bob.home.path().join("big.bin");
    std::fs::write(&file, &content).unwrap();
    let child = bob
        .command()
        .args(["-v", "send", file.to_str().unwrap(), &world.at("carol")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the file is going through the relay, the receiver answers punches again.
    let mut relayed = 0;
    assert!(
        wait_for(DEADLINE, || {
            relayed += world.relayed().len();
            relayed > 256 * 1024
        }),
        "nothing relayed"
    );
    carol.presence.pause_punching(false);
    let run = Run::from(child.wait_with_output().unwrap());
    run.ok();
    relayed += world.relayed().len();
    assert!(
        std::fs::read(inbox.path().join("big.bin")).unwrap() == content,
        "byte-identical"
    );
    assert!(
        run.stderr
            .contains("moved from the relayed path to the punched"),
        "{run:?}"
    );
    // The receiver was offered the file twice (once per path) and stored it once.
    let mut seen = Vec::new();
    while let Ok(line) = carol.events.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    let offers = seen.iter().filter(|l| l.starts_with("offer")).count();
    let stored = seen.iter().filter(|l| l.starts_with("stored")).count();
    assert_eq!((offers, stored), (2, 1), "{seen:?}");
    // The relay carried part of the file, never all of it: the rest went punched.
    assert!(
        relayed < content.len(),
        "{relayed} bytes relayed for a {} byte file",
        content.len()
    );
}

#[test]
fn a_tree_too_large_for_one_offer_goes_as_a_set_with_one_decision() {
    // 300 files under a deep directory of long names: each item is about 3.6 KB of offer, so
    // the tree needs two offers of at most 1 MiB (spec §3.13 rule 4) on one connection. Few
    // files with long paths keep the test fast.
    let (alice, bob) = (Env::new(), Env::new());
    let out = alice.home.path().join("in");
    let mut receiving = Receiving::start(
        &alice,
        &[
            "--from",
            &id_of(&bob).to_string(),
            "--listen",
            "127.0.0.1:0",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let url = receiving.direct();
    let tree = bob.home.path().join("tree");
    let deep: PathBuf = (0..14)
        .map(|level| format!("{}{level:03}", "n".repeat(247)))
        .collect();
    std::fs::create_dir_all(tree.join(&deep)).unwrap();
    let files = 300;
    for i in 0..files {
        std::fs::write(tree.join(&deep).join(format!("f{i:04}")), i.to_string()).unwrap();
    }
    let send = bob.run(&["send", "-r", tree.to_str().unwrap(), &url]);
    send.ok();
    let received = receiving.finish();
    received.ok();
    // One decision, shown with the whole set's totals, not one per offer.
    assert_eq!(
        received.stderr.matches("accepted automatically").count(),
        1,
        "{received:?}"
    );
    assert!(
        received.stderr.contains(&format!("{files} items")),
        "{received:?}"
    );
    assert_eq!(received.stdout.lines().count(), files, "{received:?}");
    for i in 0..files {
        let got = std::fs::read(out.join("tree").join(&deep).join(format!("f{i:04}"))).unwrap();
        assert_eq!(got, i.to_string().into_bytes(), "file {i}");
    }
}
