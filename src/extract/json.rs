//! A borrowed, lazy view of a JSON request body.
//!
//! A login body is read for three or four fields. Building a whole
//! `serde_json::Value` for that allocated every key and value and was most of
//! the decision path's time (criterion `login_parts/body_facts`). This view
//! checks the whole document once (syntax, depth, trailing bytes) but keeps
//! only the top-level members as borrowed raw slices; a field is decoded when
//! a JSON pointer asks for it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::ExtractError;

/// A JSON document read lazily: members of an object or elements of an array,
/// each still raw text; anything else is a scalar with nothing to point into.
#[derive(Debug, Default)]
pub struct LazyJson<'a> {
    node: Node<'a>,
}

#[derive(Debug, Default)]
enum Node<'a> {
    Object(Vec<(Cow<'a, str>, &'a RawValue)>),
    Array(Vec<&'a RawValue>),
    #[default]
    Scalar,
}

impl<'a> LazyJson<'a> {
    /// Checks `body` is one well-formed JSON value and indexes its top level.
    /// A body of only whitespace reads as an empty object, as before.
    pub fn parse(body: &'a [u8]) -> Result<Self, ExtractError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(LazyJson::default());
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let node = Node::deserialize(&mut de).map_err(malformed)?;
        de.end().map_err(malformed)?;
        Ok(LazyJson { node })
    }

    /// The text at a JSON pointer (RFC 6901): a string, or a number's digits
    /// (phone numbers are sometimes sent as numbers). A name that appears twice
    /// on the way is an error: the upstream may read the other one.
    pub fn text_at(&self, pointer: &str) -> Result<Option<Cow<'a, str>>, ExtractError> {
        let Some(path) = pointer.strip_prefix('/') else {
            return Ok(None);
        };
        let mut segments = path.split('/').map(unescape).peekable();
        let mut owned;
        let mut node = &self.node;
        while let Some(seg) = segments.next() {
            let Some(raw) = child(node, &seg)? else {
                return Ok(None);
            };
            if segments.peek().is_none() {
                return leaf(raw);
            }
            owned = serde_json::from_str::<Node<'a>>(raw.get()).map_err(malformed)?;
            node = &owned;
        }
        Ok(None)
    }
}

fn malformed(e: serde_json::Error) -> ExtractError {
    ExtractError::Malformed(e.to_string())
}

fn unescape(seg: &str) -> Cow<'_, str> {
    if seg.contains('~') {
        Cow::Owned(seg.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(seg)
    }
}

fn child<'a>(node: &Node<'a>, seg: &str) -> Result<Option<&'a RawValue>, ExtractError> {
    match node {
        Node::Object(members) => {
            let mut hits = members.iter().filter(|(k, _)| k == seg);
            let first = hits.next().map(|&(_, v)| v);
            if hits.next().is_some() {
                return Err(ExtractError::Malformed(format!(
                    "field {seg:?} appears twice"
                )));
            }
            Ok(first)
        }
        // As RFC 6901: decimal digits without a leading zero.
        Node::Array(items) => {
            let index = (!seg.is_empty()
                && seg.bytes().all(|b| b.is_ascii_digit())
                && (seg == "0" || !seg.starts_with('0')))
            .then(|| seg.parse::<usize>().ok())
            .flatten();
            Ok(index.and_then(|i| items.get(i).copied()))
        }
        Node::Scalar => Ok(None),
    }
}

fn leaf<'a>(raw: &'a RawValue) -> Result<Option<Cow<'a, str>>, ExtractError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Text<'a>>(text)
            .map(|t| Some(t.0))
            .map_err(malformed),
        Some(b'-' | b'0'..=b'9') => integer_text(text).map(|t| Some(Cow::Borrowed(t))),
        _ => Ok(None),
    }
}

/// A number where poolgate reads an identifier, code or password: only a
/// plain integer (`13800138000`) is taken, as its digits. `1.3800138e10` or
/// `13800138000.0` name the same number in other spellings, and each would
/// be counted as an account of its own: refused, not guessed at.
pub fn integer_text(text: &str) -> Result<&str, ExtractError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text)
    } else {
        Err(ExtractError::Malformed(format!(
            "the number {text} must be a plain integer (or a string)"
        )))
    }
}

/// A string that borrows from the body unless it had escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(m.size_hint().unwrap_or(4).min(16));
                while let Some((k, v)) = m.next_entry::<Text<'de>, &'de RawValue>()? {
                    members.push((k.0, v));
                }
                Ok(Node::Object(members))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = s.next_element::<&'de RawValue>()? {
                    items.push(v);
                }
                Ok(Node::Array(items))
            }
            // Scalars have no members: nothing a pointer can reach.
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                IgnoredAny::deserialize(d).map(|_| Node::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(body: &str, p: &str) -> Result<Option<String>, ExtractError> {
        LazyJson::parse(body.as_bytes())?
            .text_at(p)
            .map(|o| o.map(Cow::into_owned))
    }

    #[test]
    fn reads_what_a_value_would() {
        let b = r#"{"account":"bob","n":13800138000,"esc":"a\"b\u0041",
                    "input":{"email":"x@y.z","list":["p","q"]},"a/b":{"~":"t"}}"#;
        assert_eq!(at(b, "/account").unwrap().as_deref(), Some("bob"));
        assert_eq!(at(b, "/n").unwrap().as_deref(), Some("13800138000"));
        assert_eq!(at(b, "/esc").unwrap().as_deref(), Some("a\"bA"));
        assert_eq!(at(b, "/input/email").unwrap().as_deref(), Some("x@y.z"));
        assert_eq!(at(b, "/input/list/1").unwrap().as_deref(), Some("q"));
        assert_eq!(at(b, "/input/list/01").unwrap(), None);
        assert_eq!(at(b, "/a~1b/~0").unwrap().as_deref(), Some("t"));
        assert_eq!(at(b, "/input").unwrap(), None, "an object is not text");
        assert_eq!(at(b, "/missing/deeper").unwrap(), None);
        assert_eq!(at("[1,2]", "/0").unwrap().as_deref(), Some("1"));
        assert_eq!(at("\"s\"", "/x").unwrap(), None);
        assert_eq!(at("  \n", "/x").unwrap(), None);
    }

    #[test]
    fn a_number_is_read_only_as_a_plain_integer() {
        for other in ["13800138000.0", "1.3800138e10", "-13800138000", "1E3"] {
            let b = format!(r#"{{"phone":{other}}}"#);
            assert!(
                matches!(at(&b, "/phone"), Err(ExtractError::Malformed(_))),
                "{other} is refused"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_one_json_document() {
        for bad in [
            "{",
            "{\"a\":1} {}",
            "{\"a\":}",
            "[1,]",
            "{\"a\":\"\\x\"}",
            "nul",
        ] {
            assert!(
                matches!(
                    LazyJson::parse(bad.as_bytes()),
                    Err(ExtractError::Malformed(_))
                ),
                "{bad}"
            );
        }
        // Nested values are skipped without recursion: deep nesting is checked
        // for syntax but cannot overflow the stack.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(at(&deep, "/0/0/0").unwrap(), None);
        let unclosed = "[".repeat(100_000) + &"]".repeat(99_999);
        assert!(LazyJson::parse(unclosed.as_bytes()).is_err());
    }

    #[test]
    fn a_read_field_given_twice_is_ambiguous() {
        let b = r#"{"account":"victim","account":"other","x":1,"x":2}"#;
        assert!(matches!(at(b, "/account"), Err(ExtractError::Malformed(_))));
        // Unread duplicates do not matter to the guards.
        assert!(at(r#"{"x":1,"x":2,"account":"a"}"#, "/account").is_ok());
    }
}
