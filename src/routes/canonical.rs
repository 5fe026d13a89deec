//! Path canonicalisation: the one spelling of a path that route lookups
//! compare (see the [module doc](super)).

use std::borrow::Cow;

/// The canonical form of a path (see the module doc). Borrowed when the path
/// is canonical already, which is the common case.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    if is_simple(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = percent_decode(path)?;
    let text = std::str::from_utf8(&decoded).map_err(|_| "path is not UTF-8")?;
    if text.chars().any(|c| c.is_control()) {
        return Err("control character in path");
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split(['/', '\\']) {
        // Matrix parameters (`/login;jsessionid=x`) are not part of the route.
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("path climbs above the root");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s.make_ascii_lowercase();
    Ok(Cow::Owned(s))
}

/// Whether `path` is canonical as it stands: `/`, then segments of lower-case
/// letters, digits, `-` and `_` separated by single slashes, no trailing one.
/// Such a path has nothing to decode, resolve or fold (no `%`, no dot, no
/// white space), so the caller may take it as is. One pass over the bytes
/// with a table lookup each: this is every request's first step (a `match`
/// on ranges cost ~16 instructions a byte, callgrind).
fn is_simple(path: &str) -> bool {
    let Some((&b'/', rest)) = path.as_bytes().split_first() else {
        return false;
    };
    let mut after_slash = true;
    for &c in rest {
        if c == b'/' {
            if after_slash {
                return false;
            }
            after_slash = true;
        } else if SEGMENT_BYTE[usize::from(c)] {
            after_slash = false;
        } else {
            return false;
        }
    }
    rest.is_empty() || !after_slash
}

/// The bytes a simple path's segments are made of.
static SEGMENT_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        c += 1;
    }
    t
};

/// Decodes `%XX` escapes; an invalid escape is an error.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("invalid percent-encoding"),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_is_borrowed_when_simple() {
        assert!(matches!(
            canonical_path("/api/v2/login/account"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(canonical_path("/").unwrap(), "/");
    }

    /// The definition `is_simple` is held to: the one-`match` version it
    /// replaced.
    fn is_simple_reference(path: &str) -> bool {
        let b = path.as_bytes();
        if b.first() != Some(&b'/') {
            return false;
        }
        let mut prev = b'/';
        for &c in &b[1..] {
            match c {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
                b'/' if prev != b'/' => {}
                _ => return false,
            }
            prev = c;
        }
        b.len() == 1 || prev != b'/'
    }

    proptest::proptest! {
        #[test]
        fn is_simple_agrees_with_its_definition(path in "[/a-zA-Z0-9._%;~ \\-]{0,12}|.{0,12}") {
            proptest::prop_assert_eq!(is_simple(&path), is_simple_reference(&path), "{:?}", path);
        }

        /// A simple path is exactly one that canonicalises to itself: the
        /// lookup may skip every second reading for it.
        #[test]
        fn simple_paths_are_their_own_canonical_form(path in "[/a-zA-Z0-9._%;~ -]{0,12}") {
            let simple = is_simple(&path);
            proptest::prop_assert_eq!(
                simple,
                matches!(canonical_path(&path), Ok(Cow::Borrowed(_)))
            );
            if simple {
                proptest::prop_assert!(!path.contains("//") && !path.contains('%'));
                proptest::prop_assert!(!path.contains(char::is_whitespace) && !path.contains('.'));
            }
        }
    }
}
