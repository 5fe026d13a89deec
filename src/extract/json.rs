//! A borrowed, lazy view of a JSON request body.
//!
//! A login body is read for three or four fields. Building a whole
//! `serde_json::Value` for that allocated every key and value and was most of
//! the decision path's time (criterion `login_parts/body_facts`). This view
//! checks the whole document once (syntax, depth, trailing bytes) but keeps
//! only the top-level members as borrowed raw slices; a field is decoded when
//! a JSON pointer asks for it.
//!
//! The common shape, an object whose keys have no escapes, is indexed by a
//! single-pass scanner over the bytes ([`scan_object`]). It accepts only what
//! it is sure serde_json reads the same way; anything else (escaped keys, a
//! top-level array, nesting past [`MAX_SCAN_DEPTH`], any syntax error) goes to
//! serde_json, which stays the reference: the property test at the bottom holds
//! the two to the same answer on every input, hostile ones included.

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

/// Members and elements are raw JSON text (a value's exact bytes, no
/// surrounding whitespace), as serde_json's `RawValue` would give.
#[derive(Debug, Default)]
enum Node<'a> {
    Object(Vec<(Cow<'a, str>, &'a str)>),
    Array(Vec<&'a str>),
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
        // serde_json refuses invalid UTF-8 anywhere in a document, so the
        // scanner may work on a `str`; on anything it is unsure of, serde_json
        // decides (and words the error).
        if let Some(members) = std::str::from_utf8(body).ok().and_then(scan_object) {
            return Ok(LazyJson {
                node: Node::Object(members),
            });
        }
        Self::parse_reference(body)
    }

    /// The same as [`LazyJson::parse`] through serde_json alone: the reference
    /// the scanner is tested against, and the reading of what it refuses.
    #[doc(hidden)]
    pub fn parse_reference(body: &'a [u8]) -> Result<Self, ExtractError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(LazyJson::default());
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let node = Node::deserialize(&mut de).map_err(malformed)?;
        de.end().map_err(malformed)?;
        Ok(LazyJson { node })
    }

    /// The top-level members, in document order with duplicates kept, when
    /// the document is an object (values are raw JSON text).
    pub fn members(&self) -> Option<&[(Cow<'a, str>, &'a str)]> {
        match &self.node {
            Node::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The text at a JSON pointer (RFC 6901): a string, or a number's digits
    /// (phone numbers are sometimes sent as numbers). A name that appears twice
    /// on the way is an error: the upstream may read the other one.
    pub fn text_at(&self, pointer: &str) -> Result<Option<Cow<'a, str>>, ExtractError> {
        text_at_with(pointer, |name| child(&self.node, name))
    }
}

/// The text at `pointer` in a document whose top level `top` reads (the
/// raw value of a member or element, `None` when absent): the one walk of
/// a pointer for [`LazyJson`] and [`Flat`]. Below the top level, each value
/// is read as a document of its own.
fn text_at_with<'a>(
    pointer: &str,
    top: impl Fn(&str) -> Result<Option<&'a str>, ExtractError>,
) -> Result<Option<Cow<'a, str>>, ExtractError> {
    let Some(path) = pointer.strip_prefix('/') else {
        return Ok(None);
    };
    // The usual pointer names a top-level member (`/password`): no segment
    // to split or unescape.
    if !has_slash_or_tilde(path.as_bytes()) {
        return top(path)?.map_or(Ok(None), leaf);
    }
    let (first, below) = match path.find('/') {
        Some(i) => (&path[..i], Some(&path[i..])),
        None => (path, None),
    };
    match (top(&unescape(first))?, below) {
        (None, _) => Ok(None),
        (Some(raw), None) => leaf(raw),
        (Some(raw), Some(below)) => LazyJson::parse(raw.as_bytes())?.text_at(below),
    }
}

/// Members a [`Flat`] holds; a body with more is read by [`LazyJson`].
/// A login body has a handful.
const FLAT_MEMBERS: usize = 16;

/// The top-level members of the common body (an object of at most
/// [`FLAT_MEMBERS`] members whose keys have no escapes) in a fixed array:
/// what [`LazyJson`] reads for that shape, without allocating its member
/// list. It lives on the stack of the one call that reads a body's facts
/// and is never moved (an inline list returned by value was slower: see
/// docs/performance.md). The property test below holds it to serde_json.
pub struct Flat<'a> {
    /// Key, raw value, and whether the value is a string without escapes
    /// (known from the scan: then it is read without looking at it again).
    members: [(&'a str, &'a str, bool); FLAT_MEMBERS],
    len: usize,
}

impl Default for Flat<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Flat<'a> {
    /// An empty array, to [`Flat::read`] a body into where it stays (a
    /// `Flat` returned by value would be copied, ~520 bytes).
    pub fn new() -> Self {
        Flat {
            members: [("", "", false); FLAT_MEMBERS],
            len: 0,
        }
    }

    /// Reads the members of `body`: `true` when it has the common shape;
    /// `false` when it has not (then [`LazyJson::parse`] reads it, or words
    /// its error) and what was read must not be used.
    pub fn read(&mut self, body: &'a [u8]) -> bool {
        let Ok(s) = std::str::from_utf8(body) else {
            return false;
        };
        self.len = 0;
        let mut room = true;
        let read = visit_members(s, |key, value, plain| {
            match self.members.get_mut(self.len) {
                Some(m) => {
                    *m = (key, value, plain);
                    self.len += 1;
                }
                None => room = false,
            }
        });
        read.is_some() && room
    }

    /// [`LazyJson::text_at`] of the body read.
    pub fn text_at(&self, pointer: &str) -> Result<Option<Cow<'a, str>>, ExtractError> {
        let members = self.members.get(..self.len).unwrap_or_default();
        // A top-level member (the usual pointer) read in place: a string
        // the scan found without escapes is its text between the quotes.
        if let Some(name) = pointer.strip_prefix('/') {
            if !has_slash_or_tilde(name.as_bytes()) {
                let mut found = None;
                for m in members.iter().filter(|m| m.0 == name) {
                    if found.is_some() {
                        return Err(twice(name));
                    }
                    found = Some(m);
                }
                return match found {
                    None => Ok(None),
                    Some(&(_, v, true)) => Ok(v.get(1..v.len() - 1).map(Cow::Borrowed)),
                    Some(&(_, v, false)) => leaf(v),
                };
            }
        }
        text_at_with(pointer, |name| {
            let mut hits = members.iter().filter(|m| m.0 == name).map(|m| m.1);
            let first = hits.next();
            match hits.next() {
                Some(_) => Err(twice(name)),
                None => Ok(first),
            }
        })
    }
}

/// Containers the scanner follows inside one value; deeper goes to serde_json
/// (which has no limit when skipping).
pub const MAX_SCAN_DEPTH: usize = 64;

/// JSON's whitespace, as serde_json reads it (no form feed).
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The members of `s` when it is one JSON object whose keys have no escapes,
/// with nothing but whitespace after it; `None` when it is anything else or
/// the scanner is unsure: then serde_json decides. Keys are the raw text
/// between the quotes (without escapes that is the decoded key); values are
/// raw JSON, checked as serde_json checks a value it skips.
pub fn scan_object(s: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let mut members = Vec::with_capacity(8);
    visit_object(s, |key, value| members.push((Cow::Borrowed(key), value)))?;
    Some(members)
}

/// [`scan_object`] without collecting: `visit` sees each member (key, raw
/// value) in document order as it is read. On `None` it may have seen some
/// members of a document the scanner then refused: the caller drops what it
/// learnt from them and asks serde_json.
pub fn visit_object<'s>(s: &'s str, mut visit: impl FnMut(&'s str, &'s str)) -> Option<()> {
    visit_members(s, |key, value, _| visit(key, value))
}

/// [`visit_object`], also telling `visit` whether the value is a string
/// without escapes (its text is then the raw value between its quotes).
fn visit_members<'s>(s: &'s str, mut visit: impl FnMut(&'s str, &'s str, bool)) -> Option<()> {
    let b = s.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = plain_key(b, i + 1)?;
            let key = s.get(i + 1..end)?;
            i = skip_ws(b, end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_ws(b, i + 1);
            // Most members are strings: no container stack to set up, and
            // most strings have no escapes (the first special byte closes them).
            let mut plain = false;
            i = match b.get(start) {
                Some(b'"') => {
                    let end = next_special(b, start + 1);
                    if b.get(end) == Some(&b'"') {
                        plain = true;
                        end + 1
                    } else {
                        skip_string(b, end)?
                    }
                }
                _ => skip_value(b, start)?,
            };
            visit(key, s.get(start..i)?, plain);
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(())
}

/// The index of the first `"`, `\` or control character (< 0x20) at or
/// after `i`, or `b.len()`. Eight bytes at a time (SWAR): strings are most
/// of a body's bytes (an answer's token is hundreds), and one byte at a time
/// cost about six instructions a byte.
#[inline]
fn next_special(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // A byte's high bit is set where it is zero (`has_zero`) or below 0x20
    // (`below`); bytes >= 0x80 never are. A borrow can also set bits above
    // a real hit, never below one, so the lowest set bit is the first hit.
    let hits = |w: u64| {
        let has_zero = |v: u64| v.wrapping_sub(ONES) & !v;
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let below = w.wrapping_sub(ONES * 0x20) & !w;
        (has_zero(quote) | has_zero(backslash) | below) & HIGH
    };
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let h = hits(u64::from_le_bytes(word));
        if h != 0 {
            return i + (h.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    // The last few bytes, padded with a byte that is none of those.
    let rest = b.get(i..).unwrap_or_default();
    let mut word = [b'a'; 8];
    for (w, &c) in word.iter_mut().zip(rest) {
        *w = c;
    }
    let h = hits(u64::from_le_bytes(word));
    if h != 0 {
        i + (h.trailing_zeros() / 8) as usize
    } else {
        b.len()
    }
}

/// Whether `b` holds a `/` or a `~` (a pointer with segments or escapes).
/// Eight bytes at a time: it runs on every field a body is read for, and
/// one byte at a time cost about five instructions a byte.
#[inline]
fn has_slash_or_tilde(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Exact as a yes/no: a borrow only sets bits above a real zero byte.
    let hit = |w: u64| {
        let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        has_zero(w ^ (ONES * u64::from(b'/'))) | has_zero(w ^ (ONES * u64::from(b'~'))) != 0
    };
    let any = |b: &[u8]| b.iter().any(|&c| c == b'/' || c == b'~');
    // Short names in one word of two overlapping halves, longer ones eight
    // bytes at a time and the last eight (overlapping) for the rest.
    if b.len() <= 8 {
        return match (b.first_chunk::<4>(), b.last_chunk::<4>()) {
            (Some(lo), Some(hi)) => {
                hit(u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << 32)
            }
            _ => any(b),
        };
    }
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if hit(u64::from_le_bytes(word)) {
            return true;
        }
    }
    match b.last_chunk::<8>() {
        Some(last) => hit(u64::from_le_bytes(*last)),
        None => any(b),
    }
}

/// The index of the closing quote of a string starting at `i` (after its
/// opening quote) that has no escape and no control character.
fn plain_key(b: &[u8], i: usize) -> Option<usize> {
    let end = next_special(b, i);
    (*b.get(end)? == b'"').then_some(end)
}

/// The index after a string's closing quote, `i` after its opening quote,
/// as serde_json skips one: escapes are `\" \\ \/ \b \f \n \r \t` or `\u`
/// and four hex digits (surrogates are not paired when skipping), no control
/// characters.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = next_special(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            // A control character.
            _ => return None,
        }
    }
}

/// The index after a number at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(b, i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    // serde_json refuses a digit straight after a leading zero ("01"); so
    // does the caller, which wants a separator next.
    Some(i)
}

/// The index after one JSON value starting at `i`, followed iteratively
/// through up to [`MAX_SCAN_DEPTH`] nested containers.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut stack = [0u8; MAX_SCAN_DEPTH];
    let mut depth = 0usize;
    loop {
        // A value at `i` (whitespace skipped).
        let opened = match *b.get(i)? {
            b'"' => {
                i = skip_string(b, i + 1)?;
                None
            }
            c @ (b'{' | b'[') => {
                i += 1;
                Some(c)
            }
            b't' => {
                i = literal(b, i, b"true")?;
                None
            }
            b'f' => {
                i = literal(b, i, b"false")?;
                None
            }
            b'n' => {
                i = literal(b, i, b"null")?;
                None
            }
            b'-' | b'0'..=b'9' => {
                i = skip_number(b, i)?;
                None
            }
            _ => return None,
        };
        if let Some(c) = opened {
            if depth == MAX_SCAN_DEPTH {
                return None;
            }
            stack[depth] = c;
            depth += 1;
            i = skip_ws(b, i);
            let close = if c == b'{' { b'}' } else { b']' };
            if b.get(i) != Some(&close) {
                if c == b'{' {
                    i = key_and_colon(b, i)?;
                }
                continue;
            }
            i += 1;
            depth -= 1;
        }
        // After a value: a separator, or the end of enclosing containers.
        loop {
            let Some(top) = depth.checked_sub(1).map(|d| stack[d]) else {
                return Some(i);
            };
            i = skip_ws(b, i);
            match (*b.get(i)?, top) {
                (b',', b'{') => {
                    i = key_and_colon(b, skip_ws(b, i + 1))?;
                    break;
                }
                (b',', _) => {
                    i = skip_ws(b, i + 1);
                    break;
                }
                (b'}', b'{') | (b']', b'[') => {
                    i += 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// `"key" :` then whitespace, in a skipped object; the index of its value.
fn key_and_colon(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, skip_string(b, i + 1)?);
    if b.get(i) != Some(&b':') {
        return None;
    }
    Some(skip_ws(b, i + 1))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
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

fn child<'a>(node: &Node<'a>, seg: &str) -> Result<Option<&'a str>, ExtractError> {
    match node {
        Node::Object(members) => only_member(members, seg),
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

/// The value of the member named `name`, which must appear at most once:
/// the upstream may read the other one.
fn only_member<'a, K: AsRef<str>>(
    members: &[(K, &'a str)],
    name: &str,
) -> Result<Option<&'a str>, ExtractError> {
    let mut hits = members.iter().filter(|(k, _)| k.as_ref() == name);
    let first = hits.next().map(|&(_, v)| v);
    if hits.next().is_some() {
        return Err(twice(name));
    }
    Ok(first)
}

/// The refusal of a read field given twice.
fn twice(name: &str) -> ExtractError {
    ExtractError::Malformed(format!("field {name:?} appears twice"))
}

fn leaf<'a>(text: &'a str) -> Result<Option<Cow<'a, str>>, ExtractError> {
    match text.as_bytes().first() {
        // Raw text is valid JSON: a string without a backslash is its own
        // value (no control characters, checked when it was read).
        Some(b'"') if text.len() >= 2 && !text.as_bytes().contains(&b'\\') => {
            Ok(text.get(1..text.len() - 1).map(Cow::Borrowed))
        }
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
                    members.push((k.0, v.get()));
                }
                Ok(Node::Object(members))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = s.next_element::<&'de RawValue>()? {
                    items.push(v.get());
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
pub(crate) mod tests {
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

    /// The scanner against serde_json: the same documents accepted, the same
    /// text (or the same refusal) at every pointer poolgate might read.
    pub(crate) mod scanner_agrees_with_serde {
        use super::*;
        use proptest::prelude::*;

        const POINTERS: [&str; 13] = [
            "/password",
            "/account",
            "/a",
            "/b",
            "/input/email",
            "/input/password",
            "/input/0",
            "/list/1",
            "/pass\u{e9}",
            "/",
            "/a~1b",
            "/a~0",
            "/a/b",
        ];

        /// Applies generated edits (remove, insert or replace one byte at an
        /// index) to a document: how the property tests make near-JSON.
        pub(crate) fn mutate(mut b: Vec<u8>, edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
            for (at, op, byte) in edits {
                if b.is_empty() {
                    b.push(byte);
                    continue;
                }
                let i = at.index(b.len());
                match op {
                    0 => {
                        b.remove(i);
                    }
                    1 => b.insert(i, byte),
                    _ => b[i] = byte,
                }
            }
            b
        }

        fn outcome(doc: Result<LazyJson<'_>, ExtractError>) -> Result<Vec<String>, ()> {
            let doc = doc.map_err(|_| ())?;
            Ok(POINTERS
                .iter()
                .map(|p| match doc.text_at(p) {
                    Ok(Some(t)) => format!("some {t:?}"),
                    Ok(None) => "none".to_string(),
                    Err(_) => "refused".to_string(),
                })
                .collect())
        }

        fn outcome_flat(flat: &Flat<'_>) -> Vec<String> {
            POINTERS
                .iter()
                .map(|p| match flat.text_at(p) {
                    Ok(Some(t)) => format!("some {t:?}"),
                    Ok(None) => "none".to_string(),
                    Err(_) => "refused".to_string(),
                })
                .collect()
        }

        fn check(body: &[u8]) -> Result<(), TestCaseError> {
            let fast = outcome(LazyJson::parse(body));
            let reference = outcome(LazyJson::parse_reference(body));
            prop_assert_eq!(
                &fast,
                &reference,
                "body {:?}",
                String::from_utf8_lossy(body)
            );
            // The fixed-array reading, where it takes the body, reads the same.
            let mut flat = Flat::new();
            if flat.read(body) {
                prop_assert_eq!(
                    Ok(outcome_flat(&flat)),
                    reference,
                    "flat, body {:?}",
                    String::from_utf8_lossy(body)
                );
            }
            Ok(())
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("password".to_string()),
                Just("account".to_string()),
                Just("a".to_string()),
                Just("b".to_string()),
                Just("input".to_string()),
                Just("list".to_string()),
                Just("email".to_string()),
                Just("pass\\u0077ord".to_string()),
                Just("passw\\u006Frd".to_string()),
                Just("pass\u{e9}".to_string()),
                Just("pass\\u00e9".to_string()),
                Just("a\\/".to_string()),
                Just("a/b".to_string()),
                Just("a~".to_string()),
                Just("a~1b".to_string()),
                Just("".to_string()),
                "[a-z]{1,3}",
            ]
        }

        fn string_body() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    "[a-zA-Z0-9@. ]{1,4}",
                    Just("\\\"".to_string()),
                    Just("\\\\".to_string()),
                    Just("\\/".to_string()),
                    Just("\\n".to_string()),
                    Just("\\u0041".to_string()),
                    Just("\\u00E9".to_string()),
                    Just("\\ud83d\\ude00".to_string()),
                    Just("\\ud800".to_string()),
                    Just("\\udc00x".to_string()),
                    Just("\\ud800\\u0041".to_string()),
                    Just("\\x".to_string()),
                    Just("\\u12".to_string()),
                    Just("\\u12G4".to_string()),
                    Just("\u{7}".to_string()),
                    Just("\t".to_string()),
                    Just("\u{7f}".to_string()),
                    Just("密码".to_string()),
                    Just("\u{1F600}".to_string()),
                ],
                0..4,
            )
            .prop_map(|v| v.concat())
        }

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                "-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
                Just("01".to_string()),
                Just("-".to_string()),
                Just("1.".to_string()),
                Just("1e".to_string()),
                Just(".5".to_string()),
                Just("+1".to_string()),
                Just("1e400".to_string()),
                Just("-0".to_string()),
                Just("99999999999999999999999".to_string()),
            ]
        }

        fn ws() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => Just(String::new()),
                1 => Just(" ".to_string()),
                1 => Just("\n\t\r ".to_string()),
                1 => Just("\u{c}".to_string()),
                1 => Just("\u{a0}".to_string()),
                1 => Just("\u{feff}".to_string()),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                string_body().prop_map(|s| format!("\"{s}\"")),
                number(),
                Just("true".to_string()),
                Just("false".to_string()),
                Just("null".to_string()),
                Just("nul".to_string()),
                Just("tru".to_string()),
            ];
            leaf.prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    (prop::collection::vec((ws(), inner.clone(), ws()), 0..4)).prop_map(|items| {
                        let items: Vec<String> = items
                            .into_iter()
                            .map(|(a, v, b)| format!("{a}{v}{b}"))
                            .collect();
                        format!("[{}]", items.join(","))
                    }),
                    (prop::collection::vec((key(), ws(), inner), 0..4)).prop_map(|m| {
                        let m: Vec<String> = m
                            .into_iter()
                            .map(|(k, w, v)| format!("\"{k}\"{w}:{w}{v}"))
                            .collect();
                        format!("{{{}}}", m.join(","))
                    }),
                ]
            })
        }

        fn document() -> impl Strategy<Value = String> {
            (
                ws(),
                prop::collection::vec((ws(), key(), ws(), value(), ws()), 0..6),
                ws(),
                prop_oneof![8 => Just(String::new()), 1 => Just(",".to_string()),
                    1 => Just(" {}".to_string()), 1 => Just("}".to_string())],
            )
                .prop_map(|(w0, members, w1, tail)| {
                    let m: Vec<String> = members
                        .into_iter()
                        .map(|(a, k, b, v, c)| format!("{a}\"{k}\"{b}:{v}{c}"))
                        .collect();
                    format!("{w0}{{{}}}{w1}{tail}", m.join(","))
                })
        }

        /// Objects of the common shape that are valid JSON (clean
        /// whitespace, valid leaves): [`document`]'s are mostly invalid
        /// somewhere, so they seldom reach the fixed array with a string
        /// of escapes at a pointer read.
        fn valid_document() -> impl Strategy<Value = String> {
            let text = prop::collection::vec(
                prop_oneof![
                    "[a-zA-Z0-9@. ]{1,4}",
                    prop::sample::select(vec![
                        "\\\"",
                        "\\\\",
                        "\\/",
                        "\\n",
                        "\\u0041",
                        "\\u00E9",
                        "\\ud83d\\ude00",
                        "\\ud800",
                        "密码",
                        "\u{7f}",
                    ])
                    .prop_map(str::to_string),
                ],
                0..4,
            )
            .prop_map(|v| v.concat());
            let value = prop_oneof![
                3 => text.prop_map(|s| format!("\"{s}\"")),
                1 => "-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,3})?",
                1 => prop::sample::select(vec!["true", "null", "{\"email\":\"e\"}", "[1,\"x\"]"])
                    .prop_map(str::to_string),
            ];
            let ws = prop::sample::select(vec!["", " ", "\n\t"]);
            prop::collection::vec((key(), ws, value), 0..6).prop_map(|m| {
                let m: Vec<String> = m
                    .into_iter()
                    .map(|(k, w, v)| format!("\"{k}\"{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", m.join(","))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn on_generated_documents(doc in document()) {
                check(doc.as_bytes())?;
            }

            #[test]
            fn on_valid_documents(doc in valid_document()) {
                check(doc.as_bytes())?;
            }

            #[test]
            fn on_mutated_documents(doc in document(), edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(
                    b"{}[]\":,\\ u0123456789aeflnrstu-+.Ee\x00\x1f\x7f\xc3\xa9\xff".to_vec())), 1..4)) {
                check(&mutate(doc.into_bytes(), edits))?;
            }

            #[test]
            fn on_json_ish_bytes(b in prop::collection::vec(prop::sample::select(
                b"{}[]\"::,,\\ u0123456789aelnrstu-.E\x01\xe9".to_vec()), 0..40)) {
                check(&b)?;
            }
        }

        #[test]
        fn on_hostile_examples() {
            for body in [
                r#"{"password":"a","password":"b"}"#,
                r#"{"password":"a","pass\u0077ord":"b"}"#,
                r#"{"pass\u0077ord":"b"}"#,
                r#"{"password":"\ud800"}"#,
                r#"{"password":"\udc00"}"#,
                r#"{"password":"\ud83d\ude00"}"#,
                r#"{"password":"a\u0000b"}"#,
                "{\"password\":\"a\u{0}b\"}",
                "\u{feff}{\"password\":\"a\"}",
                "{\"password\":\"a\"}\u{c}",
                r#"{"password":"a"}{}"#,
                r#"{"password":"a",}"#,
                r#"{"password":01}"#,
                r#"{"password":1e400}"#,
                r#"{"input":{"email":"x","email":"y"}}"#,
                r#"{"input":{"em\u0061il":"x","email":"y"}}"#,
                r#"{"input":[1,2,]}"#,
                r#"{"a":[{"b":[}]}"#,
                r#"[{"password":"a"}]"#,
                "{\"password\":\"\u{e9}\"}",
            ] {
                check(body.as_bytes()).unwrap();
            }
            let mut deep = String::from(r#"{"password":"a","x":"#);
            deep.push_str(&"[".repeat(200));
            deep.push_str(&"]".repeat(200));
            deep.push('}');
            check(deep.as_bytes()).unwrap();
            check(&deep.as_bytes()[..deep.len() - 2]).unwrap();
            check(b"{\"password\":\"\xff\"}").unwrap();
        }

        proptest! {
            /// Eight bytes at a time finds what one at a time would.
            #[test]
            fn next_special_is_the_first_special_byte(
                b in prop::collection::vec(prop_oneof![
                    4 => any::<u8>(),
                    1 => prop::sample::select(b"\"\\\x00\x1f\x20\x21\x7f\x80\xa2\xdc".to_vec()),
                ], 0..40),
                from in 0usize..41,
            ) {
                let from = from.min(b.len());
                let naive = b[from..]
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                    .map_or(b.len(), |p| from + p);
                prop_assert_eq!(next_special(&b, from), naive, "{:?} from {}", b, from);
            }
        }

        proptest! {
            /// Eight bytes at a time finds what one at a time would.
            #[test]
            fn has_slash_or_tilde_is_any(
                b in prop::collection::vec(prop_oneof![
                    4 => any::<u8>(),
                    1 => prop::sample::select(b"/~\x00\x2e\x2f\x30\x7e\x7f\xaf\xfe".to_vec()),
                ], 0..40),
            ) {
                let naive = b.iter().any(|&c| c == b'/' || c == b'~');
                prop_assert_eq!(has_slash_or_tilde(&b), naive, "{:?}", b);
            }
        }

        #[test]
        fn the_fixed_array_takes_up_to_its_size_and_leaves_the_rest() {
            let body = |n: usize| {
                let m: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
                format!("{{{},\"password\":\"p\"}}", m.join(","))
            };
            let full = body(FLAT_MEMBERS - 1);
            let mut flat = Flat::new();
            assert!(flat.read(full.as_bytes()), "16 members fit");
            assert_eq!(flat.text_at("/password").unwrap().as_deref(), Some("p"));
            assert_eq!(flat.text_at("/k3").unwrap().as_deref(), Some("3"));
            // One more: the lazy view reads it, to the same answer.
            let over = body(FLAT_MEMBERS);
            assert!(!Flat::new().read(over.as_bytes()));
            let facts = crate::extract::body_facts(
                crate::extract::BodyKind::Json,
                over.as_bytes(),
                &crate::routes::default_routes()
                    .into_iter()
                    .find(|r| r.path == "/api/v2/login/account")
                    .unwrap()
                    .fields,
                crate::extract::Normalize::default(),
            )
            .unwrap();
            assert_eq!(
                facts.password,
                Some(crate::extract::Password::Clear("p".into()))
            );
            // A read field given twice is refused in the array too.
            let twice = r#"{"password":"a","x":1,"password":"b"}"#;
            let mut flat = Flat::new();
            assert!(flat.read(twice.as_bytes()));
            assert!(matches!(
                flat.text_at("/password"),
                Err(ExtractError::Malformed(_))
            ));
            assert!(flat.text_at("/x").is_ok());
            check(over.as_bytes()).unwrap();
            check(full.as_bytes()).unwrap();
        }

        #[test]
        fn the_scanner_takes_the_common_shape() {
            let body =
                r#"{"account":"bob@example.com","password":"Secr3t!x","input":{"email":"e"}}"#;
            assert!(scan_object(body).is_some());
            assert!(
                scan_object(r#"{"pass\u0077ord":"x"}"#).is_none(),
                "escaped keys go to serde"
            );
        }
    }
}
