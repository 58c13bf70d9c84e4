//! The frame decoder, for every link kind: any bytes give a message, "need more" or an
//! error, never a panic; a message decoded re-encodes to a frame that decodes to it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbvote::proto::codec::{decode_frame, frame, Wire};
use pbvote::proto::{ClientMsg, Hello, PeerMsg, RemoveReply, ServerMsg, StatusReply};
use std::fmt::Debug;

fn round_trip<T: Wire + PartialEq + Debug>(data: &[u8]) {
    if let Ok(Some((msg, used))) = decode_frame::<T>(data) {
        assert!(used <= data.len());
        // Some messages decode from forms the encoder never writes; what it writes must
        // decode to the same message.
        if let Ok(bytes) = frame(&msg) {
            let again = decode_frame::<T>(&bytes).expect("our own frame decodes");
            assert_eq!(again.map(|(m, _)| m).as_ref(), Some(&msg));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Hello>(data);
    round_trip::<ClientMsg>(data);
    round_trip::<ServerMsg>(data);
    round_trip::<PeerMsg>(data);
    round_trip::<StatusReply>(data);
    round_trip::<RemoveReply>(data);
    // And a capture file made of these bytes.
    let _ = pbvote::decode::decode(data, &[], |_| {});
});
