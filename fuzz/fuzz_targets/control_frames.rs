//! Fuzzes the control channel's framing and messages as both ends read them: arbitrary bytes,
//! cut into arbitrary pushes, through a `FrameReader`. Whatever decodes must encode back to the
//! same bytes and decode to the same message; nothing may panic or buffer past one frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_protocol::{FrameReader, Message};

fuzz_target!(|data: &[u8]| {
    // First byte: the size of the pushes (1..=256); the rest: the stream.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) + 1;
    let mut reader = FrameReader::new();
    for chunk in stream.chunks(cut) {
        reader.push(chunk);
        loop {
            match reader.next_message() {
                Ok(Some(message)) => round_trip(&message),
                Ok(None) => break,
                Err(_) => return, // a peer sending garbage is dropped
            }
        }
    }
    let _ = reader.finish();
});

fn round_trip(message: &Message) {
    let frame = message.encode();
    // The length field (4 bytes), then what it counts.
    assert_eq!(frame.len(), 4 + message.frame_len());
    let mut again = FrameReader::new();
    again.push(&frame);
    match again.next_message() {
        Ok(Some(decoded)) => assert_eq!(&decoded, message),
        other => panic!("{message:?} encoded as {frame:?} decodes as {other:?}"),
    }
    assert_eq!(again.buffered(), 0);
}
