//! The frame header: every message on a multiproc stream is `header ‖ payload`.
//!
//! ```text
//! byte 0      magic 0xA7
//! byte 1      version (1)
//! bytes 2..4  number of file descriptors attached (u16, little-endian)
//! bytes 4..8  payload length in bytes (u32, little-endian)
//! ```
//!
//! The descriptors travel as SCM_RIGHTS attached to the header's first byte. The magic and
//! version catch garbage and foreign peers at once; the length is checked against the
//! receiver's maximum message size before anything is allocated.

use crate::error::{Error, ErrorKind};
use crate::sys::socket::MAX_FDS_PER_FRAME;

/// Header size in bytes.
pub(crate) const HEADER_LEN: usize = 8;
const MAGIC: u8 = 0xA7;
const VERSION: u8 = 1;

/// Default maximum payload of one message: 1 GiB.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Descriptors attached.
    pub(crate) nfds: usize,
    /// Payload length.
    pub(crate) len: usize,
}

/// Builds the header for a payload of `len` bytes carrying `nfds` descriptors.
pub(crate) fn encode_header(len: usize, nfds: usize) -> Result<[u8; HEADER_LEN], Error> {
    let len32 = u32::try_from(len).map_err(|_| Error::too_large(len as u64, u32::MAX as u64))?;
    debug_assert!(nfds <= MAX_FDS_PER_FRAME);
    let n = (nfds as u16).to_le_bytes();
    let l = len32.to_le_bytes();
    Ok([MAGIC, VERSION, n[0], n[1], l[0], l[1], l[2], l[3]])
}

/// Parses and validates a header against the receiver's limit.
pub(crate) fn decode_header(b: &[u8; HEADER_LEN], max_len: usize) -> Result<Header, Error> {
    if b[0] != MAGIC {
        return Err(Error::msg(
            ErrorKind::Protocol,
            format!(
                "bad frame magic 0x{:02x}: the peer is not speaking the multiproc protocol",
                b[0]
            ),
        ));
    }
    if b[1] != VERSION {
        return Err(Error::msg(
            ErrorKind::Protocol,
            format!(
                "unsupported frame version {} (this build speaks {VERSION})",
                b[1]
            ),
        ));
    }
    let nfds = u16::from_le_bytes([b[2], b[3]]) as usize;
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if nfds > MAX_FDS_PER_FRAME {
        return Err(Error::msg(
            ErrorKind::Protocol,
            format!("frame claims {nfds} descriptors"),
        ));
    }
    if len > max_len {
        return Err(Error::too_large(len as u64, max_len as u64));
    }
    Ok(Header { nfds, len })
}
