//! The one-shot commands: `pbvote status` and `pbvote remove-client`. One blocking
//! request (a hello), one answer. A one-shot command needs no loop.

use crate::proto::codec::{self, decode_frame, Wire};
use crate::proto::{ClientId, Hello, RemoveReply, StatusReply};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub fn query(addr: SocketAddr, timeout: Duration) -> Result<StatusReply, String> {
    ask(addr, &Hello::Status, timeout)
}

/// Asks `addr` to remove client `id`; the answer comes once the removal is agreed.
pub fn remove(addr: SocketAddr, id: &ClientId, timeout: Duration) -> Result<RemoveReply, String> {
    ask(addr, &Hello::Remove { id: id.clone() }, timeout)
}

fn ask<T: Wire>(addr: SocketAddr, hello: &Hello, timeout: Duration) -> Result<T, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let hello = codec::frame(hello).map_err(|e| e.to_string())?;
    stream
        .write_all(&hello)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((reply, _)) = decode_frame::<T>(&buf).map_err(|e| format!("{addr}: {e}"))? {
            return Ok(reply);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr} closed the connection before answering")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
}
