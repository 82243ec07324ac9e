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

/// How big a chunk the streaming encoder hands its sink at a time.
const CHUNK: usize = 16 * 1024;

/// Buffers the encoder's many small writes into chunks for the sink (signature verifiers hash them).
struct ChunkedOut<'s> {
    buf: Vec<u8>,
    sink: &'s mut dyn FnMut(&[u8]),
}

impl ChunkedOut<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > CHUNK {
            self.flush();
        }
        if bytes.len() >= CHUNK {
            (self.sink)(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            (self.sink)(&self.buf);
            self.buf.clear();
        }
    }
}

/// The previous key of an open object, to check the keys arrive sorted.
enum PrevKey {
    None,
    /// Raw key text (no escapes) at this byte range of the input.
    Span(usize, usize),
    /// A key that had escapes, decoded.
    Decoded(String),
}

struct Frame {
    object: bool,
    /// In an object: the next string is a key.
    want_key: bool,
    prev: PrevKey,
}

/// Streams the canonical form of `text` (one JSON value that serde_json has already accepted, such as a
/// borrowed `RawValue`) to `sink` in chunks, in one pass and without building anything, provided every
/// object's keys already appear in strictly increasing order, as python-tuf, securesystemslib and tough
/// write them. Returns `Ok(false)` at the first object whose keys are out of order or repeated: whatever
/// reached the sink is then garbage and the caller starts over with [`CanonicalBytes`], which sorts.
/// Err when the value has no canonical form (a non-integer number) or is not valid JSON after all.
pub(crate) fn stream_if_sorted(text: &str, sink: &mut dyn FnMut(&[u8])) -> Result<bool, NotCanonical> {
    let bytes = text.as_bytes();
    let mut out = ChunkedOut {
        buf: Vec::with_capacity(CHUNK.min(bytes.len())),
        sink,
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'{' | b'[' => {
                stack.push(Frame {
                    object: b == b'{',
                    want_key: b == b'{',
                    prev: PrevKey::None,
                });
                out.put(&[b]);
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                out.put(&[b]);
                i += 1;
            }
            b',' => {
                if let Some(top) = stack.last_mut() {
                    top.want_key = top.object;
                }
                out.put(b",");
                i += 1;
            }
            b':' => {
                out.put(b":");
                i += 1;
            }
            b'"' => {
                let (end, escaped) = string_end(bytes, i)?;
                // Content between the quotes.
                let (start, stop) = (i + 1, end - 1);
                let decoded = if escaped {
                    let raw = text.get(i..end).ok_or(NotCanonical("string out of range"))?;
                    Some(
                        serde_json::from_str::<String>(raw)
                            .map_err(|_| NotCanonical("a string escape does not decode"))?,
                    )
                } else {
                    None
                };
                if let Some(top) = stack.last_mut().filter(|f| f.want_key) {
                    top.want_key = false;
                    let this: &[u8] = match &decoded {
                        Some(d) => d.as_bytes(),
                        None => bytes.get(start..stop).unwrap_or_default(),
                    };
                    let prev: Option<&[u8]> = match &top.prev {
                        PrevKey::None => None,
                        PrevKey::Span(s, e) => bytes.get(*s..*e),
                        PrevKey::Decoded(d) => Some(d.as_bytes()),
                    };
                    if prev.is_some_and(|p| p >= this) {
                        return Ok(false);
                    }
                    top.prev = match &decoded {
                        Some(d) => PrevKey::Decoded(d.clone()),
                        None => PrevKey::Span(start, stop),
                    };
                }
                match decoded {
                    // Unescaped JSON string content has no `"`, `\` or control character: it is already
                    // canonical, quotes included.
                    None => out.put(bytes.get(i..end).unwrap_or_default()),
                    Some(d) => {
                        let mut enc = Vec::with_capacity(d.len() + 2);
                        encode_str(&d, &mut enc);
                        out.put(&enc);
                    }
                }
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let end = bytes
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .position(|c| !matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(bytes.len(), |n| i + n);
                let number = text.get(i..end).ok_or(NotCanonical("number out of range"))?;
                check_integer(number)?;
                out.put(number.as_bytes());
                i = end;
            }
            b't' | b'f' | b'n' => {
                let rest = bytes.get(i..).unwrap_or_default();
                let word: &[u8] = [b"true".as_slice(), b"false", b"null"]
                    .into_iter()
                    .find(|w| rest.starts_with(w))
                    .ok_or(NotCanonical("not a JSON literal"))?;
                out.put(word);
                i += word.len();
            }
            _ => return Err(NotCanonical("not JSON")),
        }
    }
    out.flush();
    Ok(true)
}

/// The index just past the closing quote of the string opening at `open`, and whether it has escapes.
fn string_end(bytes: &[u8], open: usize) -> Result<(usize, bool), NotCanonical> {
    let mut escaped = false;
    let mut j = open + 1;
    loop {
        match bytes.get(j) {
            None => return Err(NotCanonical("unterminated string")),
            Some(b'"') => return Ok((j + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                j += 2;
            }
            Some(_) => j += 1,
        }
    }
}

/// The integers serde_json reads as integers have a canonical form, written as they are (valid JSON has
/// no leading zeros); everything it reads as a float (a fraction, an exponent, `-0`, beyond 64 bits)
/// has none, exactly as [`CanonicalBytes`] decides.
fn check_integer(number: &str) -> Result<(), NotCanonical> {
    const FLOAT: NotCanonical = NotCanonical("a non-integer number has no canonical JSON form");
    let ok = match number.strip_prefix('-') {
        Some(_) => number.parse::<i64>().is_ok_and(|n| n != 0),
        None => number.parse::<u64>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(FLOAT)
    }
}

#[cfg(test)]
mod one_pass_tests {
    use super::*;

    fn streamed(text: &str) -> Result<Option<Vec<u8>>, NotCanonical> {
        let mut out = Vec::new();
        let sorted = stream_if_sorted(text, &mut |c: &[u8]| out.extend_from_slice(c))?;
        Ok(sorted.then_some(out))
    }

    #[test]
    fn sorted_input_streams_to_the_same_bytes_as_the_sorting_encoder() {
        let texts = [
            r#"{ "a": {"x": false, "y": true}, "m": "é\n", "z": [1, -2, {"a": "q\"\\", "b": null}] }"#,
            r#"{"A":{},"a":[],"b":"\u00e9\/","c":18446744073709551615,"d":-9223372036854775808}"#,
            r#"  [ "x" , { } , [ ] , true , null ]  "#,
            r#"{"\u0061": 1, "b": 2}"#,
        ];
        for text in texts {
            let CanonicalBytes(sorted) = serde_json::from_str(text).unwrap();
            let got = streamed(text).unwrap().expect("input is sorted");
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(sorted).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn unsorted_or_repeated_keys_ask_for_the_sorting_encoder() {
        for text in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"[{"a":{"d":1,"c":2}}]"#,
            r#"{"\u0062":1,"a":2}"#,
        ] {
            assert_eq!(streamed(text).unwrap(), None, "{text}");
        }
    }

    #[test]
    fn non_integers_have_no_canonical_form() {
        for text in [
            "1.5",
            "1e2",
            "-0",
            "18446744073709551616",
            "-9223372036854775809",
            r#"{"a":[0.0]}"#,
        ] {
            assert!(streamed(text).is_err(), "{text}");
            assert!(serde_json::from_str::<CanonicalBytes>(text).is_err(), "{text}");
        }
    }
}
