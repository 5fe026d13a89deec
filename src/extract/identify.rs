//! Identifiers: what kind of account a value names, normalised for counting
//! and whitelist matching.

use super::{phone, Normalize};
use crate::policy::compiled::normalize;
use crate::routes::IdKind;

/// A request identifier, normalised for counting and whitelist matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    /// Its kind (never `Auto` here).
    pub kind: IdKind,
    /// Normalised value.
    pub value: String,
}

impl Identifier {
    /// Its counter key, by the store's keyer (made once per request, not
    /// in the store).
    pub fn account_key(&self, keyer: &crate::store::AccountKeyer) -> crate::store::AccountKey {
        keyer.key(&self.value)
    }
}

/// The account a token header names (`Authorization: Bearer <mfaToken>`),
/// for calls whose body names none.
pub fn token_identifier(headers: &http::HeaderMap, name: &str) -> Option<Identifier> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    let token = match v.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => v,
    };
    (!token.is_empty()).then(|| Identifier {
        kind: IdKind::Token,
        value: token.to_string(),
    })
}

/// Classifies and normalises an identifier (phone numbers in the default region).
pub fn identify(raw: &str, kind: IdKind) -> Identifier {
    identify_in(raw, kind, None, Normalize::default())
}

/// Classifies and normalises an identifier; `country_code` is the calling
/// code the request sends beside a phone number.
pub fn identify_in(
    raw: &str,
    kind: IdKind,
    country_code: Option<&str>,
    norm: Normalize,
) -> Identifier {
    let kind = match kind {
        IdKind::Auto => {
            let t = trim(raw);
            if t.contains('@') {
                IdKind::Email
            } else if t.chars().filter(char::is_ascii_digit).count() >= 5
                && t.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'))
            {
                IdKind::Phone
            } else {
                IdKind::Username
            }
        }
        k => k,
    };
    let value = match kind {
        // `normalize::email` for the usual address (ASCII, nothing to
        // trim) without its Unicode-aware trim; held to it by a property test.
        IdKind::Email => match trim(raw) {
            t if t.len() == raw.len() && t.is_ascii() => t.to_ascii_lowercase(),
            _ => normalize::email(raw),
        },
        IdKind::Phone => phone::normalize(raw, country_code, norm.phone_region),
        IdKind::Token => raw.trim().to_string(),
        // `normalize::username`, with the fast trim.
        _ => trim(raw).to_string(),
    };
    Identifier { kind, value }
}

/// `s.trim()`, without decoding characters when `s` starts and ends with
/// printable ASCII (no whitespace, ASCII or Unicode, can be there): every
/// identifier reads its value trimmed, and `trim` cost ~50 instructions.
#[inline]
pub(super) fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(0x21..=0x7e), Some(0x21..=0x7e)) => s,
        _ => s.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9@.+()-]{1,6}",
                prop::sample::select(vec![
                    " ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\u{1c}", "\u{1f}", "\u{7f}",
                    "\u{85}", "\u{a0}", "\u{2003}", "\u{3000}", "\u{feff}", "É", "ß", "İ",
                    "\u{212a}", "@", "",
                ])
                .prop_map(str::to_string),
            ],
            0..6,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        /// The fast paths give what `str::trim` and `normalize::email` give.
        #[test]
        fn fast_paths_agree(s in text(), cc in prop::option::of("[0-9+ ]{0,4}")) {
            prop_assert_eq!(trim(&s), s.trim());
            for kind in [IdKind::Auto, IdKind::Email, IdKind::Username, IdKind::Phone] {
                let id = identify_in(&s, kind, cc.as_deref(), Normalize::default());
                let t = s.trim();
                let want = match kind {
                    IdKind::Auto if t.contains('@') => IdKind::Email,
                    IdKind::Auto if t.chars().filter(char::is_ascii_digit).count() >= 5
                        && t.chars().all(|c| c.is_ascii_digit()
                            || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.')) => IdKind::Phone,
                    IdKind::Auto => IdKind::Username,
                    k => k,
                };
                prop_assert_eq!(id.kind, want);
                match want {
                    IdKind::Email => prop_assert_eq!(&id.value, &normalize::email(&s), "{:?}", s),
                    IdKind::Username => {
                        prop_assert_eq!(&id.value, &normalize::username(&s), "{:?}", s)
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn identifiers_are_normalised() {
        assert_eq!(
            identify(" Bob@Example.COM ", IdKind::Auto),
            Identifier {
                kind: IdKind::Email,
                value: "bob@example.com".into()
            }
        );
        assert_eq!(
            identify("+86 138-0000-0000", IdKind::Auto).kind,
            IdKind::Phone
        );
        assert_eq!(identify("bob", IdKind::Auto).kind, IdKind::Username);
    }
}
