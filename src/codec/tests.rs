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

/// A value whose own `Serialize` / `Deserialize` fail with their own words (issue 9.4).
#[derive(Debug)]
struct Picky(u32);

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 > 9 {
            return Err(serde::ser::Error::custom(format!(
                "picky: {} has more than one digit",
                self.0
            )));
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == 7 {
            return Err(serde::de::Error::custom("picky: seven is not welcome"));
        }
        Ok(Picky(v))
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Nested {
    Deep { items: Vec<Option<(u8, Picky)>> },
}

#[test]
fn a_types_own_serialize_message_survives_at_any_depth() {
    let mut out = Vec::new();
    let e = encode(&Picky(12), &mut out, &mut Vec::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encode);
    assert!(
        e.to_string().contains("picky: 12 has more than one digit"),
        "{e}"
    );
    let deep = Nested::Deep {
        items: vec![Some((1, Picky(3))), None, Some((2, Picky(40)))],
    };
    let e = encode(&deep, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(
        e.to_string().contains("picky: 40 has more than one digit"),
        "{e}"
    );
    // A later failure without a message of its own does not repeat an old one.
    let e = encode(&Picky(55), &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("picky: 55"), "{e}");
}

#[test]
fn a_types_own_deserialize_message_and_serdes_survive() {
    let mut out = Vec::new();
    encode(&7u32, &mut out, &mut Vec::new()).unwrap();
    let e = decode::<Picky>(&out, Vec::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
    assert!(e.to_string().contains("picky: seven is not welcome"), "{e}");
    // serde's own messages too (postcard alone says "Serde Deserialization Error").
    let mut out = Vec::new();
    encode(&(5u8,), &mut out, &mut Vec::new()).unwrap();
    let e = decode::<Nested>(&out, Vec::new()).unwrap_err();
    assert!(e.to_string().contains("variant index 0 <= i < 1"), "{e}");
    // Values in nested positions round-trip unchanged through the wrappers.
    let deep = Nested::Deep {
        items: vec![Some((1, Picky(3))), None],
    };
    let mut out = Vec::new();
    encode(&deep, &mut out, &mut Vec::new()).unwrap();
    assert_eq!(
        out,
        postcard::to_allocvec(&deep).unwrap(),
        "the wire format is postcard's"
    );
    let Nested::Deep { items } = decode::<Nested>(&out, Vec::new()).unwrap();
    assert!(matches!(items.as_slice(), [Some((1, Picky(3))), None]));
    // A failure without a message after one with: the old message is not repeated.
    let e = decode::<String>(&[0xff; 4], Vec::new()).unwrap_err();
    assert!(!e.to_string().contains("picky"), "{e}");
}

#[test]
fn a_message_survives_in_a_frame_with_descriptors_too() {
    // Decoding a frame that carries descriptors goes through the wrapper at once.
    let (x, _y) = crate::fdreg::socketpair().unwrap();
    let mut out = Vec::new();
    encode(
        &((0u32, 3u8, Option::<u32>::None), 7u32),
        &mut out,
        &mut Vec::new(),
    )
    .unwrap();
    let e = decode::<(crate::Connection<u8>, Picky)>(&out, vec![x]).unwrap_err();
    assert!(e.to_string().contains("picky: seven is not welcome"), "{e}");
    // And encoding a value with a handle: the failed first try leaves no duplicate behind.
    let (a, _b) = crate::Pipe::new::<u8>().unwrap();
    let mut fds = Vec::new();
    let e = encode(&(&a, Picky(99)), &mut Vec::new(), &mut fds).unwrap_err();
    assert!(e.to_string().contains("picky: 99"), "{e}");
    assert!(
        fds.len() <= 1,
        "{} duplicates kept for one handle",
        fds.len()
    );
}
