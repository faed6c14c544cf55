//! The running executable's fingerprint: its ELF build-id, or a hash of the file.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// A byte string that identifies the executable's exact contents.
///
/// Reads `/proc/self/exe` (the mapped file, even if it was replaced on disk since).
pub(crate) fn fingerprint() -> io::Result<Vec<u8>> {
    let file = File::open("/proc/self/exe")?;
    if let Some(id) = build_id(&file)? {
        let mut v = b"build-id:".to_vec();
        v.extend_from_slice(&id);
        return Ok(v);
    }
    // No build-id note: hash the whole file (slower, done once per process).
    let mut h1 = std::collections::hash_map::DefaultHasher::new();
    let mut h2 = std::collections::hash_map::DefaultHasher::new();
    0xA5u8.hash(&mut h2);
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = &file;
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        buf[..n].hash(&mut h1);
        buf[..n].hash(&mut h2);
        total += n as u64;
    }
    let mut v = b"hash:".to_vec();
    v.extend_from_slice(&h1.finish().to_le_bytes());
    v.extend_from_slice(&h2.finish().to_le_bytes());
    v.extend_from_slice(&total.to_le_bytes());
    Ok(v)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The `NT_GNU_BUILD_ID` note of a little-endian ELF64 file, if it has one.
fn build_id(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut ehdr = [0u8; 64];
    file.read_exact_at(&mut ehdr, 0)?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36) as usize;
    let phnum = u16_at(&ehdr, 0x38) as usize;
    if phentsize < 56 || phnum == 0 || phnum > 4096 {
        return Ok(None);
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    file.read_exact_at(&mut phdrs, phoff)?;
    for ph in phdrs.chunks_exact(phentsize) {
        if u32_at(ph, 0) != PT_NOTE {
            continue;
        }
        let offset = u64_at(ph, 8);
        let size = u64_at(ph, 32).min(1 << 16) as usize;
        let mut notes = vec![0u8; size];
        file.read_exact_at(&mut notes, offset)?;
        let mut pos = 0usize;
        while pos + 12 <= notes.len() {
            let namesz = u32_at(&notes, pos) as usize;
            let descsz = u32_at(&notes, pos + 4) as usize;
            let ntype = u32_at(&notes, pos + 8);
            let name_start = pos + 12;
            let desc_start = name_start + namesz.div_ceil(4) * 4;
            let next = desc_start + descsz.div_ceil(4) * 4;
            if next > notes.len() {
                break;
            }
            if ntype == NT_GNU_BUILD_ID && &notes[name_start..name_start + namesz] == b"GNU\0" {
                return Ok(Some(notes[desc_start..desc_start + descsz].to_vec()));
            }
            pos = next;
        }
    }
    Ok(None)
}
