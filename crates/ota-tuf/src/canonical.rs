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
