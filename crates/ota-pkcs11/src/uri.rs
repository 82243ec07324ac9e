//! RFC 7512 `pkcs11:` URIs: which token and which key, and where the module and the PIN are.
//!
//! `pkcs11:token=ota-root;object=root-1;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/ota/pin`
//!
//! Path attributes (`;`-separated): `token`, `manufacturer`, `serial`, `model`, `slot-id` choose the
//! token; `object`, `id` (binary, percent-encoded), `type` the key. Query attributes (`&`-separated):
//! `module-path`, `pin-source`. `pin-value` is refused (RFC 7512 2.3 allows it; a PIN in a URI ends
//! up in shell history and process listings). `library-*`, `slot-description` and
//! `slot-manufacturer` are accepted and not used; vendor attributes (`x-...`) are accepted and not
//! used; any other attribute is refused, so a misspelt `tokn=` is not silently ignored.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Error, Result};

/// The URI scheme (RFC 7512 2.3).
const SCHEME: &str = "pkcs11:";

/// What stays unencoded when a URI is printed: RFC 3986 unreserved characters and those RFC 7512
/// allows in values (`:`, `[`, `]`, `@`, `!`, `$`, `'`, `(`, `)`, `*`, `+`, `,`, `=` in paths; `/`, `?`
/// and `|` in queries). Everything else is percent-encoded.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'/');

/// A parsed `pkcs11:` URI. Unset attributes match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// Token label (`token=`).
    pub token: Option<String>,
    /// Token manufacturer (`manufacturer=`).
    pub manufacturer: Option<String>,
    /// Token serial number (`serial=`).
    pub serial: Option<String>,
    /// Token model (`model=`).
    pub model: Option<String>,
    /// Slot id (`slot-id=`, decimal).
    pub slot_id: Option<u64>,
    /// Key label (`object=`).
    pub object: Option<String>,
    /// Key id (`id=`, raw bytes).
    pub id: Option<Vec<u8>>,
    /// The PKCS#11 module (`module-path=`), loaded at run time.
    pub module_path: Option<PathBuf>,
    /// A file holding the PIN (`pin-source=`, a path or a `file:` URI).
    pub pin_source: Option<PathBuf>,
}

impl Pkcs11Uri {
    /// The token attributes, for messages (`token=ota-root`, or `any token` when none is set).
    pub fn token_description(&self) -> String {
        let mut parts = Vec::new();
        push_attr(&mut parts, "token", self.token.as_deref());
        push_attr(&mut parts, "manufacturer", self.manufacturer.as_deref());
        push_attr(&mut parts, "serial", self.serial.as_deref());
        push_attr(&mut parts, "model", self.model.as_deref());
        if let Some(s) = self.slot_id {
            parts.push(format!("slot-id={s}"));
        }
        if parts.is_empty() {
            "(any token)".into()
        } else {
            parts.join(";")
        }
    }

    /// The key attributes, for messages (`object=root-1;id=%01`).
    pub fn object_description(&self) -> String {
        let mut parts = Vec::new();
        push_attr(&mut parts, "object", self.object.as_deref());
        if let Some(id) = &self.id {
            parts.push(format!("id={}", encode_bytes(id)));
        }
        if parts.is_empty() {
            "(any key)".into()
        } else {
            parts.join(";")
        }
    }
}

fn push_attr(parts: &mut Vec<String>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        parts.push(format!("{name}={}", utf8_percent_encode(v, VALUE)));
    }
}

/// Every byte as `%XX`: key ids are binary.
fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02x}")).collect()
}

impl fmt::Display for Pkcs11Uri {
    /// The URI with its path and query attributes, never a PIN.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path = Vec::new();
        for (name, value) in [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("serial", &self.serial),
            ("model", &self.model),
        ] {
            push_attr(&mut path, name, value.as_deref());
        }
        if let Some(s) = self.slot_id {
            path.push(format!("slot-id={s}"));
        }
        push_attr(&mut path, "object", self.object.as_deref());
        if let Some(id) = &self.id {
            path.push(format!("id={}", encode_bytes(id)));
        }
        let mut query = Vec::new();
        let module = self.module_path.as_ref().map(|p| p.to_string_lossy());
        push_attr(&mut query, "module-path", module.as_deref());
        let pin = self.pin_source.as_ref().map(|p| p.to_string_lossy());
        push_attr(&mut query, "pin-source", pin.as_deref());
        write!(f, "{SCHEME}{}", path.join(";"))?;
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

impl FromStr for Pkcs11Uri {
    type Err = Error;

    fn from_str(s: &str) -> Result<Pkcs11Uri> {
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(malformed(s, "does not start with pkcs11:"));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            uri.set_path_attr(s, attr)?;
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            uri.set_query_attr(s, attr)?;
        }
        Ok(uri)
    }
}

impl Pkcs11Uri {
    fn set_path_attr(&mut self, uri: &str, attr: &str) -> Result<()> {
        let (name, raw) = split_attr(uri, attr)?;
        match name {
            "token" => set_once(uri, name, &mut self.token, text(uri, name, raw)?),
            "manufacturer" => set_once(uri, name, &mut self.manufacturer, text(uri, name, raw)?),
            "serial" => set_once(uri, name, &mut self.serial, text(uri, name, raw)?),
            "model" => set_once(uri, name, &mut self.model, text(uri, name, raw)?),
            "object" => set_once(uri, name, &mut self.object, text(uri, name, raw)?),
            "id" => set_once(uri, name, &mut self.id, percent_decode_str(raw).collect()),
            "slot-id" => {
                let n = text(uri, name, raw)?
                    .parse()
                    .map_err(|_| malformed(uri, "slot-id is not a decimal number"))?;
                set_once(uri, name, &mut self.slot_id, n)
            }
            // Only private keys sign; their public halves are found by the same label and id.
            "type" => match text(uri, name, raw)?.as_str() {
                "private" | "public" => Ok(()),
                other => Err(malformed(
                    uri,
                    &format!("type={other}: only private or public keys"),
                )),
            },
            // Informational: the module is chosen by module-path, the slot by its token.
            "library-manufacturer"
            | "library-description"
            | "library-version"
            | "slot-description"
            | "slot-manufacturer" => Ok(()),
            n if n.starts_with("x-") => Ok(()),
            n => Err(malformed(uri, &format!("unknown path attribute {n:?}"))),
        }
    }

    fn set_query_attr(&mut self, uri: &str, attr: &str) -> Result<()> {
        let (name, raw) = split_attr(uri, attr)?;
        match name {
            "pin-value" => Err(Error::PinValueInUri),
            "module-path" => {
                let path = PathBuf::from(text(uri, name, raw)?);
                set_once(uri, name, &mut self.module_path, path)
            }
            "pin-source" => {
                let value = text(uri, name, raw)?;
                // RFC 7512 2.3: a URI; a local file is `file:` or a plain path.
                let path = value
                    .strip_prefix("file://")
                    .or_else(|| value.strip_prefix("file:"));
                let path = PathBuf::from(path.unwrap_or(&value));
                set_once(uri, name, &mut self.pin_source, path)
            }
            "module-name" => Err(malformed(uri, "module-name is not supported: give module-path")),
            n if n.starts_with("x-") => Ok(()),
            n => Err(malformed(uri, &format!("unknown query attribute {n:?}"))),
        }
    }
}

fn split_attr<'a>(uri: &str, attr: &'a str) -> Result<(&'a str, &'a str)> {
    attr.split_once('=')
        .ok_or_else(|| malformed(uri, &format!("attribute {attr:?} has no '='")))
}

fn text(uri: &str, name: &str, raw: &str) -> Result<String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| malformed(uri, &format!("{name} is not UTF-8")))
}

fn set_once<T>(uri: &str, name: &str, slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(malformed(uri, &format!("{name} is given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// The error for a URI that does not parse. The URI itself is kept: a `pin-value` is refused before
/// any other check could quote it.
fn malformed(uri: &str, why: &str) -> Error {
    let shown = if uri.contains("pin-value") {
        "(a URI with pin-value)".to_string()
    } else {
        uri.to_string()
    };
    Error::MalformedUri {
        uri: shown,
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_token_object_id_and_query() {
        let u: Pkcs11Uri = "pkcs11:token=ota%20root;object=root-1;id=%01%ff;type=private\
                            ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin"
            .parse()
            .unwrap();
        assert_eq!(u.token.as_deref(), Some("ota root"));
        assert_eq!(u.object.as_deref(), Some("root-1"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 0xff][..]));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin_source, Some(PathBuf::from("/etc/pin")));
        // Printing and parsing again gives the same URI.
        assert_eq!(u.to_string().parse::<Pkcs11Uri>().unwrap(), u);
    }

    #[test]
    fn refuses_pin_value_without_quoting_it() {
        let e = "pkcs11:token=a?pin-value=secret"
            .parse::<Pkcs11Uri>()
            .unwrap_err();
        assert!(matches!(e, Error::PinValueInUri));
        assert!(!e.to_string().contains("secret"));
        // Even when pin-value comes after a malformed attribute.
        let e = "pkcs11:bogus;token=a?pin-value=secret"
            .parse::<Pkcs11Uri>()
            .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn refuses_unknown_duplicate_and_non_pkcs11() {
        for bad in [
            "file:/tmp/key",
            "pkcs11:tokn=a",
            "pkcs11:token=a;token=b",
            "pkcs11:token=a?module-name=softhsm2",
            "pkcs11:token",
            "pkcs11:type=secret-key",
        ] {
            assert!(
                matches!(bad.parse::<Pkcs11Uri>(), Err(Error::MalformedUri { .. })),
                "{bad}"
            );
        }
        assert!("pkcs11:token=a;x-vendor=1;library-version=2"
            .parse::<Pkcs11Uri>()
            .is_ok());
    }
}
