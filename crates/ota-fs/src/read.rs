//! [`read_bounded`]: a whole file, only if it is small enough.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::{io_error, Error, Result};

/// Reads all of `path` if it holds at most `limit` bytes, else fails with [`Error::TooLarge`] having
/// allocated at most `limit + 1` bytes. The bound holds even for a file that grows while it is read, or
/// one whose size the metadata does not tell (a pipe, a device).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let declared = file.metadata().map_err(io_error("stat", path))?.len();
    if declared > limit {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            len: declared,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    let read = file
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    let read = u64::try_from(read).unwrap_or(u64::MAX);
    if read > limit {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            len: read,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_refuses_one_byte_more() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.json");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_bounded(&p, 5).unwrap(), b"12345");
        let err = read_bounded(&p, 4).unwrap_err();
        assert!(matches!(err, Error::TooLarge { len: 5, limit: 4, .. }), "{err}");
        assert!(err.to_string().contains("root.json"), "{err}");
    }

    #[test]
    fn a_missing_file_names_itself() {
        let err = read_bounded(Path::new("/nonexistent/x.json"), 10).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.json"), "{err}");
    }
}
