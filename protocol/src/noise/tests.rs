//! The identity handshake's state machines against each other in memory, and against a
//! tampering network.

use super::*;
use crate::handshake::{handshake_decoder, write_error, ClientHandshake, ClientHandshakeConfig};
use crate::Key;

fn identity(seed: u8) -> Identity {
    Identity::from_secret([seed; 32])
}

/// What one handshake run ended with on each side.
#[derive(Debug)]
struct Outcome {
    client: Result<Session, HandshakeError>,
    server: Result<Session, HandshakeError>,
    /// The error frame the server sent, if it failed.
    server_error: BytesMut,
    mismatch: Option<(NodeId, NodeId)>,
    client_id: Option<NodeId>,
    principal: Option<Principal>,
}

/// Runs both sides; `tamper(n, frame bytes)` may change the n-th frame on the wire (0: message
/// 1, 1: message 2, 2: message 3).
fn run_with(
    client: ClientIdentityConfig,
    server: ServerIdentityConfig,
    mut tamper: impl FnMut(usize, &mut BytesMut),
) -> Outcome {
    let mut c2s = BytesMut::new();
    let mut s2c = BytesMut::new();
    let mut client_hs = ClientIdentityHandshake::start(client, &mut c2s).unwrap();
    let mut server_hs = ServerIdentityHandshake::new(server);
    let mut client_result = None;
    let mut server_result = None;
    let mut server_error = BytesMut::new();
    // Message 1, 2, 3: each a step of one side; a side that fails stops the run.
    for step in 0..3 {
        let (wire, to_server) = if step % 2 == 0 {
            (&mut c2s, true)
        } else {
            (&mut s2c, false)
        };
        tamper(step, wire);
        let frame = match handshake_decoder().decode(wire) {
            Ok(Some(frame)) => frame,
            // A tampered header the decoder refuses, or a length that now waits forever:
            // the receiving side fails (or times out) without a session.
            _ => {
                let failed = Err(HandshakeError::AuthenticationFailed);
                if to_server {
                    server_result = Some(failed);
                } else {
                    client_result = Some(failed);
                }
                break;
            }
        };
        if to_server {
            match server_hs.handle_frame(frame, &mut s2c) {
                Ok(Some(session)) => server_result = Some(Ok(session)),
                Ok(None) => {}
                Err(e) => {
                    write_error(&e, &mut server_error);
                    server_result = Some(Err(e));
                    break;
                }
            }
        } else {
            match client_hs.handle_frame(frame, &mut c2s) {
                Ok(Some(session)) => client_result = Some(Ok(session)),
                Ok(None) => {}
                Err(e) => {
                    client_result = Some(Err(e));
                    break;
                }
            }
        }
    }
    let unfinished = || Err(HandshakeError::AuthenticationFailed);
    Outcome {
        client: client_result.unwrap_or_else(unfinished),
        server: server_result.unwrap_or_else(unfinished),
        server_error,
        mismatch: client_hs.server_id_mismatch(),
        client_id: server_hs.client_id(),
        principal: server_hs.take_principal(),
    }
}

fn run(client: ClientIdentityConfig, server: ServerIdentityConfig) -> Outcome {
    run_with(client, server, |_, _| {})
}

/// The canonical AUTHENTICATION_FAILED frame of spec §4.4.
fn auth_failed_bytes() -> BytesMut {
    let mut out = BytesMut::new();
    write_error(&HandshakeError::AuthenticationFailed, &mut out);
    out
}

#[test]
fn both_identities_are_proven_and_the_session_talks() {
    let (alice, server) = (identity(1), identity(2));
    let out = run(
        ClientIdentityConfig::new(alice.clone(), Some(server.id())),
        ServerIdentityConfig::new(server),
    );
    let mut client = out.client.unwrap();
    let mut server = out.server.unwrap();
    assert_eq!(out.client_id, Some(alice.id()));
    assert_eq!(
        out.principal,
        Some(Principal {
            name: alice.id().to_string(),
            permissions: Permissions::READ,
            subtree: None,
        })
    );
    assert_eq!(client.mode(), crate::Mode::ENCRYPTED);
    ping(&mut client, &mut server);
    ping(&mut server, &mut client);
}

fn ping(from: &mut Session, to: &mut Session) {
    let mut wire = BytesMut::new();
    from.write_message(RequestId(1), &Message::Ping("hi".into()), &mut wire)
        .unwrap();
    let frame = to.read_frame(&mut wire).unwrap().unwrap();
    assert_eq!(frame.message().unwrap(), Message::Ping("hi".into()));
}

#[test]
fn a_server_whose_key_does_not_hash_to_the_id_is_refused() {
    let expected = identity(9).id();
    let impostor = identity(2);
    let out = run(
        ClientIdentityConfig::new(identity(1), Some(expected)),
        ServerIdentityConfig::new(impostor.clone()),
    );
    assert_eq!(
        out.client.unwrap_err(),
        HandshakeError::AuthenticationFailed
    );
    assert!(out.server.is_err(), "the server never gets message 3");
    assert_eq!(out.mismatch, Some((expected, impostor.id())));
}

#[test]
fn an_unknown_client_gets_the_same_bytes_as_any_failure() {
    let server = identity(2);
    let known = identity(3);
    let list = AllowList::new().allow(
        known.id(),
        Principal {
            name: "bob".into(),
            permissions: Permissions::READ,
            subtree: None,
        },
    );
    let config = ServerIdentityConfig::with_resolver(server.clone(), Arc::new(list));
    let out = run(
        ClientIdentityConfig::new(known.clone(), Some(server.id())),
        config.clone(),
    );
    assert_eq!(out.principal.unwrap().name, "bob");
    assert!(out.server.is_ok());

    let stranger = run(
        ClientIdentityConfig::new(identity(4), Some(server.id())),
        config.clone(),
    );
    assert_eq!(
        stranger.server.unwrap_err(),
        HandshakeError::AuthenticationFailed
    );
    assert_eq!(stranger.principal, None);
    assert_eq!(stranger.server_error, auth_failed_bytes());
    // A forged message 3 (one flipped bit) fails at the same point with the same bytes.
    let forged = run_with(
        ClientIdentityConfig::new(known, Some(server.id())),
        config,
        |n, wire| {
            if n == 2 {
                let last = wire.len() - 1;
                wire[last] ^= 1;
            }
        },
    );
    assert_eq!(forged.server_error, stranger.server_error);
}

#[test]
fn a_flipped_byte_anywhere_in_any_message_fails() {
    let (client, server) = (identity(1), identity(2));
    let lengths = {
        let mut lengths = Vec::new();
        run_with(
            ClientIdentityConfig::new(client.clone(), None),
            ServerIdentityConfig::new(server.clone()),
            |_, wire| lengths.push(wire.len()),
        );
        lengths
    };
    assert_eq!(lengths.len(), 3);
    for (message, &len) in lengths.iter().enumerate() {
        for position in 0..len {
            let out = run_with(
                ClientIdentityConfig::new(client.clone(), None),
                ServerIdentityConfig::new(server.clone()),
                |n, wire| {
                    if n == message {
                        wire[position] ^= 0x01;
                    }
                },
            );
            // The server never accepts a tampered exchange, and a client never accepts a
            // tampered message 2. (A flip in message 1 is noticed by the client, whose
            // transcript no longer matches the server's.)
            assert!(
                out.server.is_err(),
                "message {} byte {position}: server accepted",
                message + 1
            );
            if message < 2 {
                assert!(
                    out.client.is_err(),
                    "message {} byte {position}: client accepted",
                    message + 1
                );
            }
            // A flipped version or mode byte in message 1 may meet a policy refusal first
            // (no common version, plaintext refused), exactly as in the PSK handshake; every
            // other failure is the one AUTHENTICATION_FAILED frame.
            if message > 0 && !out.server_error.is_empty() {
                assert!(
                    out.server_error == auth_failed_bytes(),
                    "message {} byte {position}: {:?}",
                    message + 1,
                    out.server_error
                );
            }
        }
    }
}

#[test]
fn plaintext_needs_the_servers_consent() {
    let client = ClientIdentityConfig::new(identity(1), None).plaintext(true);
    let out = run(client.clone(), ServerIdentityConfig::new(identity(2)));
    assert_eq!(out.server.unwrap_err(), HandshakeError::PlaintextRefused);
    let mut server = ServerIdentityConfig::new(identity(2));
    server.allow_plaintext = true;
    let out = run(client, server);
    assert_eq!(out.client.unwrap().mode(), crate::Mode::PLAINTEXT);
    assert_eq!(out.server.unwrap().mode(), crate::Mode::PLAINTEXT);
}

#[test]
fn a_low_order_ephemeral_key_is_refused() {
    let mut message = vec![0u8; 32];
    message.extend_from_slice(
        &Offer {
            min_version: 1,
            max_version: 1,
            mode: Mode::ENCRYPTED,
            suites: SuiteOffer::new([SuiteId(0x01)]).unwrap(),
        }
        .encode(),
    );
    let frame = Frame {
        header: Header::new(
            FrameType::NOISE_1,
            Service::HANDSHAKE,
            RequestId(0),
            message.len() as u32,
        ),
        body: message.into(),
    };
    let mut server = ServerIdentityHandshake::new(ServerIdentityConfig::new(identity(2)));
    assert_eq!(
        server
            .handle_frame(frame, &mut BytesMut::new())
            .unwrap_err(),
        HandshakeError::AuthenticationFailed
    );
}

#[test]
fn frames_out_of_order_or_with_an_id_are_refused() {
    let mut c2s = BytesMut::new();
    ClientIdentityHandshake::start(ClientIdentityConfig::new(identity(1), None), &mut c2s).unwrap();
    let hello = handshake_decoder().decode(&mut c2s).unwrap().unwrap();
    let mut with_id = hello.clone();
    with_id.header.id = RequestId(5);
    let mut as_message_3 = hello.clone();
    as_message_3.header.kind = FrameType::NOISE_3;
    for frame in [
        with_id,
        as_message_3,
        Frame::from_message(RequestId(1), &Message::Ping("x".into())),
    ] {
        let mut server = ServerIdentityHandshake::new(ServerIdentityConfig::new(identity(2)));
        assert_eq!(
            server
                .handle_frame(frame, &mut BytesMut::new())
                .unwrap_err(),
            HandshakeError::AuthenticationFailed
        );
    }
    // Message 1 twice: the second is out of order.
    let mut server = ServerIdentityHandshake::new(ServerIdentityConfig::new(identity(2)));
    server
        .handle_frame(hello.clone(), &mut BytesMut::new())
        .unwrap();
    assert!(server.handle_frame(hello, &mut BytesMut::new()).is_err());
}

#[test]
fn disjoint_versions_are_reported() {
    let mut server = ServerIdentityHandshake::new(ServerIdentityConfig::new(identity(2)));
    let mut initiator = noise(&identity(1), None, true).unwrap();
    let offer = Offer {
        min_version: 7,
        max_version: 9,
        mode: Mode::ENCRYPTED,
        suites: SuiteOffer::new([SuiteId(0x01)]).unwrap(),
    };
    let message = write(&mut initiator, &offer.encode()).unwrap();
    let mut wire = BytesMut::from(&frame_bytes(FrameType::NOISE_1, &message)[..]);
    let frame = handshake_decoder().decode(&mut wire).unwrap().unwrap();
    assert!(matches!(
        server.handle_frame(frame, &mut BytesMut::new()),
        Err(HandshakeError::NoCommonVersion { theirs_min: 7, .. })
    ));
}

#[test]
fn offers_decode_exactly() {
    let offer = Offer {
        min_version: 1,
        max_version: 3,
        mode: Mode::ENCRYPTED,
        suites: SuiteOffer::new([SuiteId(0x02), SuiteId(0x01)]).unwrap(),
    };
    assert_eq!(offer.encode(), [1, 3, 0, 2, 2, 1]);
    assert_eq!(Offer::decode(&offer.encode()), Some(offer));
    for bad in [
        &[][..],
        &[1, 1, 0, 0],       // no suite
        &[1, 1, 0, 1],       // count says one, none follows
        &[1, 1, 0, 1, 1, 9], // a byte left over
        &[0, 1, 0, 1, 1],    // version 0
        &[2, 1, 0, 1, 1],    // min above max
        &[1, 1, 2, 1, 1],    // mode 2
        &[1, 1, 0, 1, 0],    // suite 0
        &[1, 1, 0, 2, 1, 1], // a repeated suite
    ] {
        assert_eq!(Offer::decode(bad), None, "{bad:?}");
    }
    let choice = Choice {
        version: 1,
        mode: Mode::ENCRYPTED,
        suite: SuiteId(1),
    };
    assert_eq!(Choice::decode(&[1, 0, 1]), Some(choice));
    assert_eq!(Choice::decode(&[1, 0, 1, 0]), None);
}

/// Runs an AcceptHandshake against a client of either kind; returns the server's result.
fn accept(config: AcceptConfig, psk_client: Option<Key>) -> Result<Principal, HandshakeError> {
    let mut c2s = BytesMut::new();
    let mut s2c = BytesMut::new();
    let mut server = AcceptHandshake::new(config);
    enum Client {
        Psk(ClientHandshake),
        Id(ClientIdentityHandshake),
    }
    let mut client = match psk_client {
        Some(key) => Client::Psk(ClientHandshake::start(
            ClientHandshakeConfig::new(key),
            &mut c2s,
        )),
        None => Client::Id(
            ClientIdentityHandshake::start(ClientIdentityConfig::new(identity(1), None), &mut c2s)
                .unwrap(),
        ),
    };
    let (mut cdec, mut sdec) = (handshake_decoder(), handshake_decoder());
    loop {
        while let Some(frame) = sdec.decode(&mut c2s).unwrap() {
            if server.handle_frame(frame, &mut s2c)?.is_some() {
                return server
                    .take_principal()
                    .ok_or(HandshakeError::AuthenticationFailed);
            }
        }
        while let Some(frame) = cdec.decode(&mut s2c).unwrap() {
            match &mut client {
                Client::Psk(c) => c.handle_frame(frame, &mut c2s)?,
                Client::Id(c) => c.handle_frame(frame, &mut c2s)?,
            };
        }
    }
}

#[test]
fn one_port_serves_both_handshakes_by_the_first_frame() {
    let key = Key::from_bytes([7; 32]);
    let both = AcceptConfig {
        psk: Some(ServerHandshakeConfig::new(key.clone())),
        identity: Some(ServerIdentityConfig::new(identity(2))),
    };
    assert_eq!(
        accept(both.clone(), Some(key.clone())).unwrap(),
        Principal::key_holder()
    );
    assert_eq!(
        accept(both, None).unwrap().name,
        identity(1).id().to_string()
    );
    let psk_only = AcceptConfig {
        psk: Some(ServerHandshakeConfig::new(key.clone())),
        identity: None,
    };
    assert_eq!(
        accept(psk_only, None).unwrap_err(),
        HandshakeError::AuthenticationFailed
    );
    let identity_only = AcceptConfig {
        psk: None,
        identity: Some(ServerIdentityConfig::new(identity(2))),
    };
    assert_eq!(
        accept(identity_only, Some(key)).unwrap_err(),
        HandshakeError::AuthenticationFailed
    );
}

#[test]
fn the_fuzz_entry_takes_any_bytes() {
    use crate::handshake::ClientHandshake;
    // A real transcript for each mode, then truncations and flips of it.
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0], vec![1], vec![2], vec![0x80; 40]];
    let mut hello = BytesMut::new();
    ClientIdentityHandshake::start(ClientIdentityConfig::new(identity(1), None), &mut hello)
        .unwrap();
    let mut psk = BytesMut::new();
    ClientHandshake::start(
        ClientHandshakeConfig::new(Key::from_bytes([7; 32])),
        &mut psk,
    );
    for (mode, body) in [
        (0u8, hello.to_vec()),
        (0, psk.to_vec()),
        (2, vec![0x0a; 80]),
    ] {
        for cut in [0, 1, 12, body.len() / 2, body.len()] {
            let mut input = vec![mode];
            input.extend_from_slice(&body[..cut.min(body.len())]);
            inputs.push(input.clone());
            if let Some(last) = input.last_mut() {
                *last ^= 0xff;
            }
            inputs.push(input);
        }
    }
    for input in inputs {
        fuzz_identity_handshake(&input);
    }
}

#[test]
fn the_server_picks_the_clients_first_suite_it_accepts() {
    let client = ClientIdentityConfig::new(identity(1), None);
    assert_eq!(client.suites, RecordSuite::DEFAULT_SUITES.to_vec());
    let out = run(client.clone(), ServerIdentityConfig::new(identity(2)));
    assert_eq!(out.client.unwrap().version(), MAX_VERSION);
    let mut cbc_only = ServerIdentityConfig::new(identity(2));
    cbc_only.suites = vec![RecordSuite::Aes256CbcHmacSha256];
    assert!(run(client.clone(), cbc_only).server.is_ok());
    let mut gcm_only = ServerIdentityConfig::new(identity(2));
    gcm_only.suites = vec![RecordSuite::Aes256Gcm];
    let mut cbc_client = client;
    cbc_client.suites = vec![RecordSuite::Aes256CbcHmacSha256];
    assert!(matches!(
        run(cbc_client, gcm_only).server,
        Err(HandshakeError::NoCommonSuite { .. })
    ));
}
