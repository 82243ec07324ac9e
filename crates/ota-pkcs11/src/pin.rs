//! Where the user PIN comes from: a file only its owner can read, or an environment variable; never
//! a command line or a URI. Well-known default PINs are refused.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A PIN is at most this long (PKCS#11 tokens allow far less; the bound keeps a wrong path, say a
/// device file, from being read whole).
const MAX_PIN_FILE: u64 = 256;

/// PINs that tokens ship with or that people type first: a token with one of them is as good as
/// unlocked. Compared after trimming the trailing newline of a PIN file.
const DEFAULT_PINS: &[&str] = &[
    "",
    "0000",
    "00000000",
    "000000",
    "1111",
    "111111",
    "1234",
    "12345",
    "123456",
    "1234567",
    "12345678",
    "123456789",
    "87654321",
    "654321",
    "4321",
    "pin",
    "PIN",
    "password",
    "changeme",
    "648219",
];

/// A user PIN, wiped from memory when dropped.
pub struct Pin(Zeroizing<String>);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Pin {
    /// The PIN's text.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the PIN from `path`, refusing a file that group or others can read or write.
    pub fn from_file(path: &Path, token: &str) -> Result<Pin> {
        let read_err = |source| Error::PinFileRead {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::PinFileAccessible {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_PIN_FILE)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Pin::checked(text.trim_end_matches(['\n', '\r']), token)
    }

    /// Takes the PIN from the environment variable `name`, if set.
    pub fn from_env(name: &str, token: &str) -> Result<Option<Pin>> {
        match std::env::var(name) {
            Ok(v) => {
                let v = Zeroizing::new(v);
                Pin::checked(&v, token).map(Some)
            }
            Err(_) => Ok(None),
        }
    }

    /// A PIN given by the program (read from somewhere it trusts), still refused if a default.
    pub fn checked(pin: &str, token: &str) -> Result<Pin> {
        if DEFAULT_PINS.contains(&pin) {
            return Err(Error::DefaultPin {
                token: token.to_string(),
            });
        }
        Ok(Pin(Zeroizing::new(pin.to_string())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refuses_defaults_and_accepts_a_real_pin() {
        for p in ["1234", "0000", "123456", "12345678", "87654321", ""] {
            assert!(
                matches!(Pin::checked(p, "t"), Err(Error::DefaultPin { .. })),
                "{p}"
            );
        }
        assert_eq!(Pin::checked("k7-Rq2vw", "t").unwrap().expose(), "k7-Rq2vw");
    }

    #[test]
    fn pin_file_must_be_private_and_its_newline_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "k7-Rq2vw\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Pin::from_file(&p, "t").unwrap_err();
        assert!(matches!(e, Error::PinFileAccessible { mode: 0o644, .. }), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Pin::from_file(&p, "t").unwrap().expose(), "k7-Rq2vw");
        std::fs::write(&p, "1234\n").unwrap();
        assert!(matches!(Pin::from_file(&p, "t"), Err(Error::DefaultPin { .. })));
    }
}
