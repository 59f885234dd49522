//! What an origin sends back (`proxy::fast::origin`): a response head parser and a chunked-body
//! decoder that never panic, whatever arrives and however it is split across reads; a body
//! the decoder says is complete is re-framed so that decoding it again gives the same data.
#![no_main]
use bytes::BytesMut;
use crossfade::proxy::fast::origin::{parse_head, Chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let mut head = BytesMut::from(data);
    if let Ok(h) = parse_head(&mut head, split & 1 == 1) {
        for (name, value) in h.iter() {
            assert!(!name.is_empty() && value.len() <= h.head.len());
        }
    }
    // The same bytes as a chunked body, arriving in two reads.
    let at = (split as usize).min(data.len());
    let (mut decoder, mut buf, mut out) = (Chunked::default(), BytesMut::new(), BytesMut::new());
    let mut sent = 0;
    for part in [&data[..at], &data[at..]] {
        buf.extend_from_slice(part);
        match decoder.decode(&mut buf, &mut out) {
            Err(_) => return,
            Ok(done) => {
                sent += decoder.data();
                if !done {
                    continue;
                }
                let (mut again, mut twice) = (Chunked::default(), BytesMut::new());
                let mut reframed = out.clone();
                assert_eq!(again.decode(&mut reframed, &mut twice), Ok(true));
                assert!(reframed.is_empty(), "nothing after the last chunk");
                assert_eq!(again.data(), sent, "the re-framed body holds the same data");
                return;
            }
        }
    }
});
