use super::protocol::decode_request;

/// Random bytes never crash, hang or over-allocate the request decoder (seeded, so a failure
/// reproduces).
#[test]
fn request_decoder_survives_random_bytes() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cases: usize = std::env::var("MULTIPROC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut ok = 0usize;
    for _ in 0..cases {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if decode_request(&bytes).is_ok() {
            ok += 1;
        }
    }
    assert!(ok < cases, "random bytes should mostly be refused");
}
