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
    /// Its counter key (made here, once per request, not in the store).
    pub fn account_key(&self) -> crate::store::AccountKey {
        crate::store::AccountKey::of(&self.value)
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
            let t = raw.trim();
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
        IdKind::Email => normalize::email(raw),
        IdKind::Phone => phone::normalize(raw, country_code, norm.phone_region),
        IdKind::Token => raw.trim().to_string(),
        _ => normalize::username(raw),
    };
    Identifier { kind, value }
}

#[cfg(test)]
mod tests {
    use super::*;

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
