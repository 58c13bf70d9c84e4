//! `pbvote status`: one blocking request, one answer. A one-shot command needs no loop.

use crate::proto::codec::{self, decode_frame};
use crate::proto::{Hello, StatusReply};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub fn query(addr: SocketAddr, timeout: Duration) -> Result<StatusReply, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let hello = codec::frame(&Hello::Status).map_err(|e| e.to_string())?;
    stream
        .write_all(&hello)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((reply, _)) =
            decode_frame::<StatusReply>(&buf).map_err(|e| format!("{addr}: {e}"))?
        {
            return Ok(reply);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr} closed the connection before answering")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
}
