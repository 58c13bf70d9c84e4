//! What a client reads back at start: its log and its promise file. Any bytes give the
//! lines (or an error) and a promise (or an error), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbvote::reactor::promise::PromiseFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((lines, _torn)) = pbvote::ballot_log::parse(text) {
            let mut out = Vec::new();
            for line in &lines {
                line.write_to(&mut out);
            }
            // What parses writes back to what parses the same.
            let again = std::str::from_utf8(&out).expect("we write text");
            assert_eq!(pbvote::ballot_log::parse(again).map(|(l, _)| l), Ok(lines));
        }
        let _ = pbvote::check::ClientLog::parse("fuzz", text, None);
    }
    let _ = PromiseFile::parse(data);
});
