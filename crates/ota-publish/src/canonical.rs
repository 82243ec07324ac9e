//! Canonical JSON (OLPC, as tough and python-tuf sign it) and the bytes of a signed metadata file.
//!
//! Every byte repo-tool publishes comes from here, so the same inputs always give the same files.

use std::collections::HashMap;

use serde::Serialize;
use tough::schema::{Signature, Target, Targets};

use crate::error::{Error, Result};

/// Canonical JSON (OLPC, as tough and python-tuf sign it).
///
/// Fast path: when every string is printable ASCII and every number an integer (always the case for
/// what repo-tool writes), OLPC canonical JSON is just sorted keys, no whitespace, and `"` and `\` as the
/// only escapes; that is written directly from a `serde_json::Value`, about 10x faster than
/// olpc-cjson's formatter, which buffers and Unicode-normalizes every string. Anything else goes
/// through olpc-cjson. A unit test checks both give the same bytes.
pub(crate) fn canonical<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let v = serde_json::to_value(value).map_err(|e| Error::Tough(format!("canonical JSON: {e}")))?;
    let mut out = Vec::with_capacity(4096);
    if write_canonical_ascii(&v, &mut out) {
        return Ok(out);
    }
    canonical_olpc(value)
}

/// [`canonical`] of targets metadata without building one `serde_json::Value` for the whole target map
/// (the cost of a single add to a 10,000-target repository): the map is written entry by entry in
/// sorted order and spliced into the canonical form of the rest. Falls back to [`canonical`] whenever
/// the fast form does not apply.
pub(crate) fn canonical_targets(t: &Targets) -> Result<Vec<u8>> {
    if !t._extra.is_empty() {
        return canonical(t);
    }
    let shell = Targets {
        spec_version: t.spec_version.clone(),
        version: t.version,
        expires: t.expires,
        targets: HashMap::new(),
        delegations: t.delegations.clone(),
        _extra: HashMap::new(),
    };
    let head = canonical(&shell)?;
    // With no extra fields the canonical object ends with `"targets":{},"version":N}`.
    let tail = format!("\"targets\":{{}},\"version\":{}}}", t.version);
    let Some(prefix) = head.len().checked_sub(tail.len()).and_then(|at| {
        (head.get(at..) == Some(tail.as_bytes()))
            .then(|| head.get(..at))
            .flatten()
    }) else {
        return canonical(t);
    };
    let mut entries: Vec<_> = t.targets.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.raw().as_bytes().cmp(b.0.raw().as_bytes()));
    let mut out = Vec::with_capacity(head.len() + t.targets.len() * 400);
    out.extend_from_slice(prefix);
    out.extend_from_slice(b"\"targets\":{");
    for (i, (name, target)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_canonical_target(name.raw(), target, &mut out) {
            return canonical(t);
        }
    }
    out.extend_from_slice(format!("}},\"version\":{}}}", t.version).as_bytes());
    Ok(out)
}

/// Writes one entry of a targets map, `"name":{"custom":{...},"hashes":{...},"length":N}`, in canonical
/// form straight from the typed target (keys in sorted order; no intermediate JSON value, which was
/// most of the cost for 10,000 targets). False when the fast form does not apply (extra fields,
/// non-ASCII or non-integer values); then `out` holds garbage.
fn write_canonical_target(name: &str, t: &Target, out: &mut Vec<u8>) -> bool {
    if !t._extra.is_empty() || !t.hashes._extra.is_empty() {
        return false;
    }
    // `Decoded` serializes the hex text it was read from; only plain hex digits are copied as they are.
    let Ok(sha256) = serde_json::to_string(&t.hashes.sha256) else {
        return false;
    };
    let hex_text = sha256
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(hex_text) = hex_text else {
        return false;
    };
    if !write_canonical_str(name, out) {
        return false;
    }
    out.extend_from_slice(b":{");
    if !t.custom.is_empty() {
        out.extend_from_slice(b"\"custom\":");
        if !write_canonical_object(t.custom.iter(), out) {
            return false;
        }
        out.push(b',');
    }
    out.extend_from_slice(b"\"hashes\":{\"sha256\":\"");
    out.extend_from_slice(hex_text.as_bytes());
    out.extend_from_slice(b"\"},\"length\":");
    out.extend_from_slice(t.length.to_string().as_bytes());
    out.push(b'}');
    true
}

/// Writes a JSON string in canonical form if it is printable ASCII (`"` and `\` the only escapes);
/// false otherwise.
fn write_canonical_str(s: &str, out: &mut Vec<u8>) -> bool {
    out.push(b'"');
    for &b in s.as_bytes() {
        if !(0x20..=0x7e).contains(&b) {
            return false;
        }
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    true
}

/// Writes `v` as canonical JSON if it holds only printable-ASCII strings and integers; false otherwise
/// (then `out` holds garbage).
fn write_canonical_ascii(v: &serde_json::Value, out: &mut Vec<u8>) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return false;
            }
        }
        Value::String(s) => return write_canonical_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write_canonical_ascii(item, out) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(map) => return write_canonical_object(map.iter(), out),
    }
    true
}

/// Writes an object's members as canonical JSON: keys sorted by their bytes, values as in
/// [`write_canonical_ascii`]; false (and garbage in `out`) if any key or value is not printable ASCII.
fn write_canonical_object<'a>(
    members: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
    out: &mut Vec<u8>,
) -> bool {
    let mut entries: Vec<(&String, &serde_json::Value)> = members.collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_canonical_str(k, out) {
            return false;
        }
        out.push(b':');
        if !write_canonical_ascii(v, out) {
            return false;
        }
    }
    out.push(b'}');
    true
}

/// Canonical JSON through olpc-cjson (any input).
pub(crate) fn canonical_olpc<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .map_err(|e| Error::Tough(format!("canonical JSON: {e}")))?;
    Ok(data)
}

/// The bytes of a metadata file from the canonical signed part and its signatures: the canonical
/// envelope is `{"signatures":[...],"signed":<canonical role>}` ("signatures" sorts before "signed"),
/// so the signed bytes are spliced in as they are, never serialized twice.
pub(crate) fn envelope(msg: &[u8], signatures: &[Signature]) -> Result<Vec<u8>> {
    let sigs = canonical(&signatures)?;
    let mut out = Vec::with_capacity(msg.len() + sigs.len() + 32);
    out.extend_from_slice(b"{\"signatures\":");
    out.extend_from_slice(&sigs);
    out.extend_from_slice(b",\"signed\":");
    escape_controls(msg, &mut out);
    out.push(b'}');
    Ok(out)
}

/// Appends canonical JSON `msg` with its control characters escaped. OLPC canonical JSON writes them
/// raw inside strings (the newlines of an ECDSA key's PEM in root metadata, as python-tuf writes
/// ECDSA keys), which no JSON parser accepts. Canonical JSON has no whitespace outside strings, so
/// every such byte is inside one. Every client (python-tuf, tough, ota-tuf, this crate's loader)
/// verifies the canonical form of what it parsed, which the escapes do not change.
fn escape_controls(msg: &[u8], out: &mut Vec<u8>) {
    for &b in msg {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
}

/// The bytes of a metadata file: canonical JSON of the whole signed envelope (deterministic and what
/// every client parses). The unit tests check [`envelope`] gives the same bytes.
#[cfg(test)]
pub(crate) fn file_bytes<T: Serialize>(signed: &tough::schema::Signed<T>) -> Result<Vec<u8>> {
    canonical(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{now, SPEC_VERSION};
    use std::num::NonZeroU64;
    use tough::schema::decoded::Decoded;
    use tough::schema::Hashes;

    #[test]
    fn the_fast_canonical_writer_matches_olpc_cjson() {
        let v = serde_json::json!({
            "z": [1, -2, {"b": "q\"uote", "a": "back\\slash"}],
            "a": {"ota": {"kind": "release", "version": "1.2.3-rc.1+b.5", "hardware": ["gw-a"]}},
            "m": null, "t": true, "f": false, "n": 18446744073709551615u64, "": "",
        });
        let mut fast = Vec::new();
        assert!(write_canonical_ascii(&v, &mut fast));
        assert_eq!(fast, canonical_olpc(&v).unwrap());
        // Non-ASCII and floats take the olpc-cjson path.
        for other in [
            serde_json::json!({"k": "caf\u{e9}"}),
            serde_json::json!({"k": "tab\there"}),
        ] {
            assert!(!write_canonical_ascii(&other, &mut Vec::new()));
            assert_eq!(canonical(&other).unwrap(), canonical_olpc(&other).unwrap());
        }
    }

    #[test]
    fn spliced_targets_canonical_form_matches_the_generic_one() {
        let mut t = Targets::new(SPEC_VERSION.into(), NonZeroU64::new(42).unwrap(), now().unwrap());
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        for (i, name) in ["b/x.bin", "a/y.bin", "a/x.bin", "a+b/c-1.0.0+z.bin"]
            .iter()
            .enumerate()
        {
            let target = tough::schema::Target {
                length: i as u64,
                hashes: Hashes {
                    sha256: Decoded::from(vec![i as u8; 32]),
                    _extra: HashMap::new(),
                },
                custom: [("ota".to_owned(), serde_json::json!({"kind": "release", "n": i}))]
                    .into_iter()
                    .collect(),
                _extra: HashMap::new(),
            };
            t.targets.insert(tough::TargetName::new(*name).unwrap(), target);
        }
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        // No custom object, extra fields in a target or its hashes, a non-ASCII custom value: each
        // entry form (and the fallback) gives olpc-cjson's bytes.
        let mut plain = t.targets.values().next().unwrap().clone();
        plain.custom.clear();
        t.targets
            .insert(tough::TargetName::new("plain").unwrap(), plain.clone());
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        let mut extra = plain.clone();
        extra
            .hashes
            ._extra
            .insert("sha512".into(), serde_json::json!("00"));
        t.targets
            .insert(tough::TargetName::new("extra-hash").unwrap(), extra);
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t.targets.remove(&tough::TargetName::new("extra-hash").unwrap());
        let mut extra = plain.clone();
        extra._extra.insert("zz".into(), serde_json::json!([1, 2]));
        t.targets.insert(tough::TargetName::new("extra").unwrap(), extra);
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t.targets.remove(&tough::TargetName::new("extra").unwrap());
        let mut accent = plain;
        accent
            .custom
            .insert("note".into(), serde_json::json!("caf\u{e9}"));
        t.targets
            .insert(tough::TargetName::new("accent").unwrap(), accent);
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t.delegations = None;
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t._extra.insert("zz".into(), serde_json::json!(1));
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
    }

    #[test]
    fn a_metadata_file_escapes_the_raw_newlines_of_canonical_json() {
        // An ECDSA key's PEM: canonical JSON keeps its newlines raw, which no JSON parser accepts.
        let signed =
            serde_json::json!({"keys": {"k": {"public": "-----BEGIN PUBLIC KEY-----\nMFkw\u{1}\n"}}});
        let msg = canonical(&signed).unwrap();
        assert!(msg.contains(&b'\n'));
        let file = envelope(&msg, &[]).unwrap();
        assert!(
            !file.iter().any(|b| *b < 0x20),
            "{}",
            String::from_utf8_lossy(&file)
        );
        // Parsed back, the signed part has the same canonical form: the signatures still cover it.
        let parsed: serde_json::Value = serde_json::from_slice(&file).unwrap();
        assert_eq!(canonical(&parsed["signed"]).unwrap(), msg);
    }
}
