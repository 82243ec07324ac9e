//! The one file hasher: SHA-256 and length of a file, streamed through a caller's buffer.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Length and SHA-256 of the file at `path`, read through `buf` (memory stays at one buffer whatever
/// the file's size). `verify` checks published target files with it; the target writer checks a
/// file found under a target's final name with it.
pub(crate) fn hash_file(path: &Path, buf: &mut [u8]) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    loop {
        let n = read_full(&mut file, buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        length += n as u64;
    }
    Ok((length, hasher.finalize().into()))
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
pub(crate) fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match src.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
