//! What a peer that is not yet identified sends (net/src/secure.rs `handshake` and
//! `LinkReader::recv_frame`). `handshake` is async over a `TcpStream`, so this target
//! makes the same calls on the same buffers that it makes:
//!
//! - mode 0: the initiator's first Noise message, read by a responder into a
//!   65,535-byte payload buffer;
//! - mode 1: the responder's answer, read by an initiator after its first message;
//! - mode 2: Noise transport records after the handshake (u16 big-endian length, then
//!   the record), decrypted into a buffer as long as the record, as `recv_frame` does;
//! - mode 3: the decrypted plaintext of a link not yet past its hello: frames of at
//!   most 4,096 bytes (`MAX_HELLO_FRAME`, private in secure.rs), `Message::decode`, and
//!   for a hello the checks `handshake` makes, with a fixed handshake hash; a hello
//!   that decodes, re-signed by a fixed node key over its fields, must verify on that
//!   link and on no other.
//!
//! The Noise parsing is the `snow` crate's; the target pins that a peer's bytes reach
//! it only as `handshake` passes them, and that it refuses them without a panic.
#![no_main]

use std::sync::LazyLock;

use bytes::BytesMut;
use grapevine_ledger::{Hash, Keypair};
use grapevine_net::frame;
use grapevine_net::message::{Hello, Message, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;
use snow::StatelessTransportState;

/// As in net/src/secure.rs.
const NOISE_PARAMS: &str = "Noise_NN_25519_ChaChaPoly_SHA256";
const NOISE_MAX: usize = 65535;
const MAX_HELLO_FRAME: usize = 4096;

const HANDSHAKE_HASH: [u8; 32] = [0x5a; 32];
const CHAIN_ID: u32 = 7;
const GENESIS_HASH: Hash = Hash([9; 32]);

static NODE_KEY: LazyLock<Keypair> = LazyLock::new(|| Keypair::from_seed(&[42; 32]));

/// The reading side of one honest in-memory handshake, made once (a handshake costs
/// four X25519 operations; the transport state is stateless, nonces are passed in).
static TRANSPORT: LazyLock<StatelessTransportState> = LazyLock::new(|| {
    let mut i = builder().build_initiator().expect("valid noise parameters");
    let mut r = builder().build_responder().expect("valid noise parameters");
    let (mut msg, mut payload) = (vec![0u8; NOISE_MAX], vec![0u8; NOISE_MAX]);
    let n = i.write_message(&[], &mut msg).expect("first message");
    r.read_message(&msg[..n], &mut payload).expect("honest first message");
    let n = r.write_message(&[], &mut msg).expect("answer");
    i.read_message(&msg[..n], &mut payload).expect("honest answer");
    r.into_stateless_transport_mode()
        .expect("handshake finished")
});

fn builder() -> snow::Builder<'static> {
    snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise parameters"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => responder_reads(rest),
        1 => initiator_reads(rest),
        2 => transport(rest),
        _ => hello_frames(rest),
    }
});

fn responder_reads(msg: &[u8]) {
    let mut hs = builder().build_responder().expect("valid noise parameters");
    let mut payload = vec![0u8; NOISE_MAX];
    // read_noise bounds a message to 65,535 bytes by its u16 length.
    let msg = &msg[..msg.len().min(NOISE_MAX)];
    if hs.read_message(msg, &mut payload).is_ok() {
        let mut out = vec![0u8; NOISE_MAX];
        let n = hs
            .write_message(&[], &mut out)
            .expect("an answer after a good first message");
        assert!(n <= NOISE_MAX);
        let _ = hs.get_handshake_hash();
        let _ = hs.into_stateless_transport_mode();
    }
}

fn initiator_reads(msg: &[u8]) {
    let mut hs = builder().build_initiator().expect("valid noise parameters");
    let (mut out, mut payload) = (vec![0u8; NOISE_MAX], vec![0u8; NOISE_MAX]);
    hs.write_message(&[], &mut out).expect("first message");
    let msg = &msg[..msg.len().min(NOISE_MAX)];
    // The answer would need our fresh ephemeral key: never valid, always refused.
    let _ = hs.read_message(msg, &mut payload);
}

fn transport(mut data: &[u8]) {
    let state = &*TRANSPORT;
    let mut plain = BytesMut::new();
    let mut nonce = 0u64;
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        let cipher = &data[2..2 + len];
        data = &data[2 + len..];
        let mut out = vec![0u8; cipher.len()];
        let Ok(n) = state.read_message(nonce, cipher, &mut out) else {
            return;
        };
        nonce += 1;
        plain.extend_from_slice(&out[..n]);
    }
    hello_frames(&plain);
}

fn hello_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Only the first frame counts: anything but a valid hello ends the handshake.
    let Ok(Some(f)) = frame::decode(&mut buf, MAX_HELLO_FRAME) else {
        return;
    };
    let Ok(m) = Message::decode(&f) else {
        return;
    };
    assert_eq!(m.encode(), f.to_vec(), "canonical encoding");
    let Message::Hello(theirs) = m else {
        let _ = m.kind();
        return;
    };
    let accepted = theirs.version == PROTOCOL_VERSION
        && theirs.chain_id == CHAIN_ID
        && theirs.genesis_hash == GENESIS_HASH
        && theirs.verify(&HANDSHAKE_HASH);
    // Random bytes never prove a key: only the fixed key below signs anything here.
    assert!(
        !accepted || theirs.node_key == NODE_KEY.address(),
        "a hello accepted without its key's signature: {theirs:?}"
    );
    let mut resigned = Hello {
        node_key: NODE_KEY.address(),
        ..theirs.clone()
    };
    resigned.signature = NODE_KEY.sign(&resigned.signing_bytes(&HANDSHAKE_HASH));
    assert!(resigned.verify(&HANDSHAKE_HASH));
    assert!(!resigned.verify(&[0xa5; 32]), "replayed on another link");
}
