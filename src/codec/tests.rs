use super::frame::*;
use super::*;

#[test]
fn roundtrip_plain_value() {
    let mut out = Vec::new();
    let mut fds = Vec::new();
    encode(
        &(1u32, "two".to_string(), vec![3u64; 4]),
        &mut out,
        &mut fds,
    )
    .unwrap();
    assert!(fds.is_empty());
    let v: (u32, String, Vec<u64>) = decode(&out, Vec::new()).unwrap();
    assert_eq!(v, (1, "two".to_string(), vec![3; 4]));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut out = Vec::new();
    encode(&7u8, &mut out, &mut Vec::new()).unwrap();
    out.push(0);
    assert_eq!(
        decode::<u8>(&out, Vec::new()).unwrap_err().kind(),
        ErrorKind::Decode
    );
}

#[test]
fn garbage_decodes_to_an_error() {
    let e = decode::<(String, Vec<u64>)>(&[0xff; 16], Vec::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
}

#[test]
fn header_limits() {
    let h = encode_header(10, 2).unwrap();
    assert_eq!(decode_header(&h, 100).unwrap(), Header { nfds: 2, len: 10 });
    assert_eq!(
        decode_header(&h, 5).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    let mut bad = h;
    bad[0] = 0;
    assert_eq!(
        decode_header(&bad, 100).unwrap_err().kind(),
        ErrorKind::Protocol
    );
    let huge = [0xA7, 1, 0, 0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        decode_header(&huge, DEFAULT_MAX_MESSAGE)
            .unwrap_err()
            .kind(),
        ErrorKind::TooLarge
    );
}
