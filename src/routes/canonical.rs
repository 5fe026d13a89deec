//! Path canonicalisation: the one spelling of a path that route lookups
//! compare (see the [module doc](super)).

use std::borrow::Cow;

/// The canonical form of a path (see the module doc). Borrowed when the path
/// is canonical already, which is the common case.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let simple = path.starts_with('/')
        && path.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'-' | b'_')
        })
        && !path.contains("//")
        && (path.len() == 1 || !path.ends_with('/'));
    if simple {
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
}
