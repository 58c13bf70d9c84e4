//! Frames: a 4-byte big-endian body length, then the body in CBOR.
//!
//! This is the only module that knows the body encoding (serde_cbor is unmaintained
//! upstream; swapping it touches only this module). The messages of every ballot take a
//! hand-written path ([`hot`]) that writes the same bytes.

mod hot;

use super::limits::{MAX_CLIENT_FRAME_LEN, MAX_FRAME_LEN, MAX_HELLO_LEN};
use super::messages::{ClientMsg, Hello, PeerMsg, RemoveReply, ServerMsg, StatusReply};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

pub const LEN_PREFIX: usize = 4;

/// A type that travels as a frame body, with the name decode errors use for it.
pub trait Wire: Serialize + DeserializeOwned {
    const NAME: &'static str;
    /// The largest body of this type accepted or produced.
    const MAX_LEN: usize = MAX_FRAME_LEN;

    /// Appends the body if `self` is a message with a hand-written encoding.
    fn encode_hot(&self, _out: &mut Vec<u8>) -> bool {
        false
    }

    /// The message, if `body` is one with a hand-written decoding, in the form the
    /// encoder writes. `None` leaves the body to serde_cbor.
    fn decode_hot(_body: &[u8]) -> Option<Self> {
        None
    }
}

impl Wire for Hello {
    const NAME: &'static str = "Hello";
    const MAX_LEN: usize = MAX_HELLO_LEN;
}
impl Wire for ClientMsg {
    const NAME: &'static str = "ClientMsg";
    const MAX_LEN: usize = MAX_CLIENT_FRAME_LEN;
    fn encode_hot(&self, out: &mut Vec<u8>) -> bool {
        hot::encode_client(self, out)
    }
    fn decode_hot(body: &[u8]) -> Option<Self> {
        hot::decode_client(body)
    }
}
impl Wire for ServerMsg {
    const NAME: &'static str = "ServerMsg";
    const MAX_LEN: usize = MAX_CLIENT_FRAME_LEN;
    fn encode_hot(&self, out: &mut Vec<u8>) -> bool {
        hot::encode_server(self, out)
    }
    fn decode_hot(body: &[u8]) -> Option<Self> {
        hot::decode_server(body)
    }
}
impl Wire for PeerMsg {
    const NAME: &'static str = "PeerMsg";
    fn encode_hot(&self, out: &mut Vec<u8>) -> bool {
        hot::encode_peer(self, out)
    }
    fn decode_hot(body: &[u8]) -> Option<Self> {
        hot::decode_peer(body)
    }
}
impl Wire for StatusReply {
    const NAME: &'static str = "StatusReply";
}
impl Wire for RemoveReply {
    const NAME: &'static str = "RemoveReply";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than [`Wire::MAX_LEN`] of the expected type.
    TooLarge { len: usize, max: usize },
    /// The body is a valid message of another link kind.
    WrongLink {
        expected: &'static str,
        found: &'static str,
    },
    /// The body is not a valid `expected` (bad CBOR, wrong shape, trailing bytes).
    Malformed {
        expected: &'static str,
        detail: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::WrongLink { expected, found } => {
                write!(f, "expected {expected} but got a {found} (wrong link kind)")
            }
            DecodeError::Malformed { expected, detail } => {
                write!(f, "malformed {expected}: {detail}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Clone, Debug)]
pub enum EncodeError {
    TooLarge { len: usize, max: usize },
    Cbor(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { len, max } => {
                write!(
                    f,
                    "encoded frame of {len} bytes exceeds the maximum of {max}"
                )
            }
            EncodeError::Cbor(e) => write!(f, "cbor encoding failed: {e}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends one frame holding `msg` to `out`. Encodes in place: no allocation beyond the
/// growth of `out`. On error `out` is left as it was.
pub fn encode_frame<T: Wire>(msg: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    let written = if msg.encode_hot(out) {
        Ok(())
    } else {
        serde_cbor::to_writer(&mut *out, msg)
    };
    if let Err(e) = written {
        out.truncate(start);
        return Err(EncodeError::Cbor(e.to_string()));
    }
    let len = out.len() - start - LEN_PREFIX;
    if len > T::MAX_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: T::MAX_LEN,
        });
    }
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// One frame as a fresh buffer (tests, the status tool).
pub fn frame<T: Wire>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out)?;
    Ok(out)
}

/// The length of the frame at the start of `buf`, prefix included, once the prefix is
/// there (`None`: not yet); an error if it announces more than any frame may hold.
pub fn frame_extent(buf: &[u8]) -> Option<Result<usize, DecodeError>> {
    let prefix = buf.get(..LEN_PREFIX)?;
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    Some(if len > MAX_FRAME_LEN {
        Err(DecodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        })
    } else {
        Ok(LEN_PREFIX + len)
    })
}

/// Decodes the first frame in `buf`. `Ok(None)`: need more bytes. `Ok(Some((msg, used)))`:
/// one message, `used` bytes consumed. An error means the stream is unusable: the caller
/// closes the connection.
pub fn decode_frame<T: Wire>(buf: &[u8]) -> Result<Option<(T, usize)>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > T::MAX_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: T::MAX_LEN,
        });
    }
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    if let Some(msg) = T::decode_hot(body) {
        return Ok(Some((msg, LEN_PREFIX + len)));
    }
    match serde_cbor::from_slice::<T>(body) {
        Ok(msg) => Ok(Some((msg, LEN_PREFIX + len))),
        Err(e) => Err(match foreign_kind(body, T::NAME) {
            Some(found) => DecodeError::WrongLink {
                expected: T::NAME,
                found,
            },
            None => DecodeError::Malformed {
                expected: T::NAME,
                detail: e.to_string(),
            },
        }),
    }
}

/// Which other message kind `body` is, for a decode error that says what really arrived.
/// Only runs on the error path.
fn foreign_kind(body: &[u8], expected: &'static str) -> Option<&'static str> {
    fn is<T: Wire>(body: &[u8], expected: &str) -> Option<&'static str> {
        (T::NAME != expected && serde_cbor::from_slice::<T>(body).is_ok()).then_some(T::NAME)
    }
    is::<Hello>(body, expected)
        .or_else(|| is::<ClientMsg>(body, expected))
        .or_else(|| is::<ServerMsg>(body, expected))
        .or_else(|| is::<PeerMsg>(body, expected))
        .or_else(|| is::<StatusReply>(body, expected))
}
