//! OLPC canonical JSON (what TUF signs): object keys sorted by their UTF-8 bytes, no whitespace, integers
//! only, and in strings only `"` and `\` escaped (every other character, control characters included, is
//! written as its raw UTF-8 bytes). This is securesystemslib's `encode_canonical`, which python-tuf and
//! tough both sign with.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotCanonical(pub(crate) &'static str);

/// Appends the canonical encoding of `value` to `out`.
pub(crate) fn encode(value: &Value, out: &mut Vec<u8>) -> Result<(), NotCanonical> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(NotCanonical("a non-integer number has no canonical JSON form"));
            }
        }
        Value::String(s) => encode_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorted explicitly: serde_json's map keeps insertion order when another crate in the build
            // enables `preserve_order`.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode_str(key, out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    encode(v, out)?;
                }
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        let v: Value = serde_json::from_str(s).unwrap();
        let mut out = Vec::new();
        encode(&v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canon(r#"{ "b": 1, "a": [true, null, -2], "A": {} }"#),
            r#"{"A":{},"a":[true,null,-2],"b":1}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        assert_eq!(canon(r#""a\"b\\c\n\u00e9""#), "\"a\\\"b\\\\c\n\u{e9}\"");
    }

    #[test]
    fn refuses_floats() {
        let v: Value = serde_json::from_str("1.5").unwrap();
        assert!(encode(&v, &mut Vec::new()).is_err());
    }
}

/// The canonical encoding of a JSON value, computed by a serde visitor while the received bytes are parsed,
/// so no JSON tree is built: each object buffers only its members' encodings to sort them.
pub(crate) struct CanonicalBytes(pub(crate) Vec<u8>);

impl<'de> serde::Deserialize<'de> for CanonicalBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CanonicalBytes, D::Error> {
        d.deserialize_any(CanonicalVisitor).map(CanonicalBytes)
    }
}

struct CanonicalVisitor;

impl<'de> serde::de::Visitor<'de> for CanonicalVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value with a canonical form (integers only)")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Vec<u8>, E> {
        Ok(if v { b"true".to_vec() } else { b"false".to_vec() })
    }
    fn visit_i64<E>(self, v: i64) -> Result<Vec<u8>, E> {
        Ok(v.to_string().into_bytes())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Vec<u8>, E> {
        Ok(v.to_string().into_bytes())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Vec<u8>, E> {
        Err(E::custom("a non-integer number has no canonical JSON form"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(v.len() + 2);
        encode_str(v, &mut out);
        Ok(out)
    }
    fn visit_unit<E>(self) -> Result<Vec<u8>, E> {
        Ok(b"null".to_vec())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = vec![b'['];
        let mut first = true;
        while let Some(CanonicalBytes(item)) = seq.next_element()? {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&item);
        }
        out.push(b']');
        Ok(out)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<u8>, A::Error> {
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some((key, CanonicalBytes(value))) = map.next_entry::<String, CanonicalBytes>()? {
            members.push((key, value));
        }
        // Stable sort, then keep the last of duplicate keys (as a JSON object read into a map would).
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out =
            Vec::with_capacity(members.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 2);
        out.push(b'{');
        let mut first = true;
        let mut iter = members.into_iter().peekable();
        while let Some((key, value)) = iter.next() {
            if iter.peek().is_some_and(|(next, _)| *next == key) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            encode_str(&key, &mut out);
            out.push(b':');
            out.extend_from_slice(&value);
        }
        out.push(b'}');
        Ok(out)
    }
}

#[cfg(test)]
mod streaming_tests {
    use super::*;

    #[test]
    fn streaming_encoding_equals_tree_encoding() {
        let text = r#"{ "z": [1, -2, {"b": null, "a": "q\"\\"}], "a": {"y": true, "x": false}, "m": "é\n" }"#;
        let CanonicalBytes(streamed) = serde_json::from_str(text).unwrap();
        let mut tree = Vec::new();
        encode(&serde_json::from_str(text).unwrap(), &mut tree).unwrap();
        assert_eq!(streamed, tree);
        assert!(serde_json::from_str::<CanonicalBytes>("[1.5]").is_err());
    }
}
