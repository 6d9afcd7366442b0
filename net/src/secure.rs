//! Encrypted, authenticated links: a Noise handshake (`Noise_NN_25519_ChaChaPoly_SHA256`
//! through the `snow` crate), then a signed [`Hello`] from each side that binds its node
//! key to this link's handshake hash, then frames carried in Noise transport messages.
//!
//! On the wire, every Noise message is a u16 big-endian length and the message. After the
//! handshake, application frames (u32 length + payload, see [`crate::frame`]) are split
//! into Noise messages of at most 65,535 bytes, so a frame may be up to
//! [`MAX_FRAME`](crate::message::MAX_FRAME) long.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use snow::StatelessTransportState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::frame::{self, FrameError};
use crate::message::{Hello, MAX_FRAME, Message, MessageError, PROTOCOL_VERSION};
use grapevine_ledger::{Hash, Keypair};

/// Largest first frame (the hello): a peer not yet identified cannot make us buffer more.
const MAX_HELLO_FRAME: usize = 4096;

const NOISE_PARAMS: &str = "Noise_NN_25519_ChaChaPoly_SHA256";
const NOISE_MAX: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one Noise transport message.
const CHUNK: usize = NOISE_MAX - TAG_LEN;

/// Why a link failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The Noise handshake or decryption failed.
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    /// A frame broke the size limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message did not decode.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The peer's first message was not a valid hello.
    #[error("handshake refused: {0}")]
    Refused(String),
}

impl LinkError {
    /// Whether the peer broke the protocol (as opposed to a network failure).
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(self, LinkError::Io(_))
    }
}

/// What this node proves and expects in a handshake.
#[derive(Debug)]
pub struct LocalIdentity {
    /// The node key (not a validator or account key).
    pub node_key: Keypair,
    /// The chain id peers must share.
    pub chain_id: u32,
    /// The genesis hash peers must share.
    pub genesis_hash: Hash,
    /// The port this node accepts connections on (0: none).
    pub listen_port: u16,
    /// The address this node asks peers to dial it at (`[p2p] external_address`, as
    /// last resolved); `None`: the address it is seen from plus `listen_port`.
    pub external: std::sync::RwLock<Option<SocketAddr>>,
}

/// The sending half of a link.
pub struct LinkWriter {
    half: OwnedWriteHalf,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    buf: Vec<u8>,
}

/// The receiving half of a link.
pub struct LinkReader {
    half: OwnedReadHalf,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    plain: BytesMut,
    cipher: Vec<u8>,
    /// Largest frame accepted now: small until the hello is in.
    max_frame: usize,
}

impl std::fmt::Debug for LinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkWriter(nonce {})", self.nonce)
    }
}

impl std::fmt::Debug for LinkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkReader(nonce {})", self.nonce)
    }
}

async fn write_noise(w: &mut (impl AsyncWriteExt + Unpin), msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("noise message too long"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out).await
}

async fn read_noise(r: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    r.read_exact(buf).await?;
    Ok(())
}

impl LinkWriter {
    /// Encrypts and sends one message.
    pub async fn send(&mut self, msg: &Message) -> Result<usize, LinkError> {
        self.send_frame(&msg.encode()).await
    }

    /// Encrypts and sends one frame carrying `payload`; returns bytes written.
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<usize, LinkError> {
        let mut framed = BytesMut::with_capacity(payload.len() + frame::HEADER_LEN);
        frame::encode(payload, &mut framed);
        self.send_plaintext(&framed).await
    }

    /// Encrypts and sends `plain` as is, without framing it. For tests that play a
    /// misbehaving peer (for example, one announcing an oversized frame).
    #[doc(hidden)]
    pub async fn send_plaintext(&mut self, framed: &[u8]) -> Result<usize, LinkError> {
        self.buf.clear();
        let mut cipher = vec![0u8; NOISE_MAX];
        for chunk in framed.chunks(CHUNK) {
            let n = self.state.write_message(self.nonce, chunk, &mut cipher)?;
            self.nonce += 1;
            let len = u16::try_from(n).map_err(|_| snow::Error::Input)?;
            self.buf.extend_from_slice(&len.to_be_bytes());
            self.buf.extend_from_slice(&cipher[..n]);
        }
        self.half.write_all(&self.buf).await?;
        Ok(self.buf.len())
    }
}

impl LinkReader {
    /// Receives the next frame's payload and the number of bytes read for it. An
    /// oversized frame, a decryption failure or a closed socket is an error.
    pub async fn recv_frame(&mut self) -> Result<(Bytes, usize), LinkError> {
        let mut read = 0;
        loop {
            if let Some(f) = frame::decode(&mut self.plain, self.max_frame)? {
                return Ok((f, read));
            }
            read_noise(&mut self.half, &mut self.cipher).await?;
            read += 2 + self.cipher.len();
            let mut out = vec![0u8; self.cipher.len()];
            let n = self
                .state
                .read_message(self.nonce, &self.cipher, &mut out)?;
            self.nonce += 1;
            self.plain.extend_from_slice(&out[..n]);
        }
    }

    /// Receives and decodes the next message.
    pub async fn recv(&mut self) -> Result<(Message, usize), LinkError> {
        let (f, n) = self.recv_frame().await?;
        Ok((Message::decode(&f)?, n))
    }
}

/// A link after a successful handshake.
#[derive(Debug)]
pub struct Link {
    /// Receiving half.
    pub reader: LinkReader,
    /// Sending half.
    pub writer: LinkWriter,
    /// The peer's verified hello.
    pub hello: Hello,
}

/// Runs the Noise handshake on `stream` (as initiator if we dialed), then exchanges and
/// checks hellos: same protocol version, chain id and genesis hash, and a signature that
/// proves the peer's node key on this very link. The caller bounds it with a timeout.
pub async fn handshake(
    stream: TcpStream,
    initiator: bool,
    me: &LocalIdentity,
) -> Result<Link, LinkError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|_| LinkError::Refused("noise parameters".into()))?;
    let builder = snow::Builder::new(params);
    let mut hs = if initiator {
        builder.build_initiator()?
    } else {
        builder.build_responder()?
    };
    let (mut r, mut w) = stream.into_split();
    let mut msg = vec![0u8; NOISE_MAX];
    let mut payload = vec![0u8; NOISE_MAX];
    let mut incoming = Vec::new();
    if initiator {
        let n = hs.write_message(&[], &mut msg)?;
        write_noise(&mut w, &msg[..n]).await?;
        read_noise(&mut r, &mut incoming).await?;
        hs.read_message(&incoming, &mut payload)?;
    } else {
        read_noise(&mut r, &mut incoming).await?;
        hs.read_message(&incoming, &mut payload)?;
        let n = hs.write_message(&[], &mut msg)?;
        write_noise(&mut w, &msg[..n]).await?;
    }
    let hh = hs.get_handshake_hash().to_vec();
    let state = Arc::new(hs.into_stateless_transport_mode()?);
    let mut writer = LinkWriter {
        half: w,
        state: state.clone(),
        nonce: 0,
        buf: Vec::new(),
    };
    let mut reader = LinkReader {
        half: r,
        state,
        nonce: 0,
        plain: BytesMut::new(),
        cipher: Vec::new(),
        max_frame: MAX_HELLO_FRAME,
    };
    let mine = Hello::new(
        &me.node_key,
        me.chain_id,
        me.genesis_hash,
        me.listen_port,
        *me.external.read().unwrap_or_else(|p| p.into_inner()),
        &hh,
    );
    writer.send(&Message::Hello(mine)).await?;
    let (first, _) = reader.recv().await?;
    reader.max_frame = MAX_FRAME;
    let Message::Hello(theirs) = first else {
        return Err(LinkError::Refused(format!(
            "expected hello, got {}",
            first.kind()
        )));
    };
    if theirs.version != PROTOCOL_VERSION {
        return Err(LinkError::Refused(format!(
            "protocol version {} (we speak {PROTOCOL_VERSION})",
            theirs.version
        )));
    }
    if theirs.chain_id != me.chain_id {
        return Err(LinkError::Refused(format!(
            "chain id {} (ours is {})",
            theirs.chain_id, me.chain_id
        )));
    }
    if theirs.genesis_hash != me.genesis_hash {
        return Err(LinkError::Refused(format!(
            "genesis {} (ours is {})",
            theirs.genesis_hash, me.genesis_hash
        )));
    }
    if !theirs.verify(&hh) {
        return Err(LinkError::Refused(
            "hello signature does not prove the node key".into(),
        ));
    }
    Ok(Link {
        reader,
        writer,
        hello: theirs,
    })
}
