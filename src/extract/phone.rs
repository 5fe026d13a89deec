//! Phone numbers counted as one account however they are spelled.
//!
//! `+86 138-0013-8000`, `13800138000`, `(+86) 138 0013 8000` and
//! `tel:+86-138-0013-8000` are one number to the login service, so they must
//! be one account to the per-account counters and the whitelist. A number
//! without a country code is read in the configured default region
//! (`guards.phone_default_region`, `CN` unless set), or in the country the
//! request names (Authing's `phoneCountryCode`, e.g. `+86`), and written in
//! E.164 (`+8613800138000`). Parsing is Google's libphonenumber metadata
//! through the `phonenumber` crate: country codes, trunk prefixes and
//! international call prefixes are data, not something to hand-write.
//!
//! What does not parse as a possible number keeps only its digits and a
//! leading `+` (the previous normalisation), so nothing is lost: it is still
//! counted, under that spelling.

use std::str::FromStr;

use phonenumber::country;

/// The region numbers without a country code belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRegion(country::Id);

impl Default for PhoneRegion {
    fn default() -> Self {
        PhoneRegion(country::Id::CN)
    }
}

impl PhoneRegion {
    /// The region of an ISO 3166-1 alpha-2 code (`CN`, `us`).
    pub fn parse(code: &str) -> anyhow::Result<Self> {
        let upper = code.trim().to_ascii_uppercase();
        country::Id::from_str(&upper)
            .map(PhoneRegion)
            .map_err(|_| anyhow::anyhow!("{code:?} is not a region code (ISO 3166-1, e.g. \"CN\")"))
    }

    /// The ISO code.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

/// The E.164 form of `raw`. `country_code` is the request's own country
/// calling code (`+86`, `86`), which wins over `region` for a number
/// written without one.
pub fn normalize(raw: &str, country_code: Option<&str>, region: PhoneRegion) -> String {
    let t = raw.trim();
    if t.is_empty() {
        return String::new();
    }
    let cc = country_code
        .map(|c| c.trim().trim_start_matches('+'))
        .filter(|c| !c.is_empty() && c.len() <= 3 && c.bytes().all(|b| b.is_ascii_digit()));
    let explicit = t.starts_with('+') || t.starts_with("tel:") || t.starts_with("00");
    let mut tries: Vec<(Option<country::Id>, String)> = Vec::with_capacity(3);
    match cc {
        Some(cc) if !explicit => tries.push((None, format!("+{cc}{t}"))),
        _ => tries.push((Some(region.0), t.to_string())),
    }
    // A number written with its country code but without the `+`
    // (`8613800138000`) is the same subscriber to a lenient login service.
    if !explicit {
        tries.push((None, format!("+{t}")));
    }
    for (r, text) in tries {
        if let Some(e164) = e164(r, &text) {
            return e164;
        }
    }
    // Keep the digits; and read those digits once more, so that normalising
    // is a fixed point (`99999999999x` and `99999999999` are one account).
    let digits = fallback(t);
    if digits != t {
        for (r, text) in [
            (Some(region.0), digits.clone()),
            (None, format!("+{digits}")),
        ] {
            if digits.starts_with('+') && r.is_none() {
                continue;
            }
            if let Some(e164) = e164(r, &text) {
                return e164;
            }
        }
    }
    digits
}

/// `text` in E.164 when it is a valid number (read in `region` when it has
/// no country code).
fn e164(region: Option<country::Id>, text: &str) -> Option<String> {
    let n = phonenumber::parse(region, text).ok()?;
    phonenumber::is_valid(&n).then(|| n.format().mode(phonenumber::Mode::E164).to_string())
}

/// Digits only, with a leading `+` kept.
fn fallback(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    if t.starts_with('+') {
        out.push('+');
    }
    out.extend(t.chars().filter(char::is_ascii_digit));
    if out.is_empty() || out == "+" {
        // Not a number at all: keep the text, trimmed, so it is still one key.
        return t.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cn(s: &str) -> String {
        normalize(s, None, PhoneRegion::default())
    }

    #[test]
    fn spellings_of_one_number_are_one_number() {
        for s in [
            "13800138000",
            "+8613800138000",
            "+86 138 0013 8000",
            "+86-138-0013-8000",
            "(+86) 138 0013 8000",
            " 138-0013-8000 ",
            "8613800138000",
            "008613800138000",
            "tel:+86-138-0013-8000",
        ] {
            assert_eq!(cn(s), "+8613800138000", "{s}");
        }
        assert_eq!(
            normalize("13800138000", Some("+86"), PhoneRegion::default()),
            "+8613800138000"
        );
        assert_eq!(
            normalize("13800138000", Some("86"), PhoneRegion::parse("US").unwrap()),
            "+8613800138000"
        );
    }

    #[test]
    fn region_decides_numbers_without_a_country_code() {
        let us = PhoneRegion::parse("us").unwrap();
        assert_eq!(normalize("(650) 253-0000", None, us), "+16502530000");
        assert_eq!(normalize("+1 650 253 0000", None, us), "+16502530000");
        assert_ne!(cn("6502530000"), "+16502530000");
        assert!(PhoneRegion::parse("XX").is_err());
        assert_eq!(us.as_str(), "US");
    }

    #[test]
    fn normalising_is_a_fixed_point() {
        // Found by the `policy` fuzz target: a spelling that only parses once
        // its stray characters are gone.
        for s in [
            "99999999999x",
            "9999-9999-999x",
            "13800138000",
            "+99912",
            "abc",
            "1a2b3c4d5e",
        ] {
            let once = cn(s);
            assert_eq!(cn(&once), once, "{s}");
        }
    }

    #[test]
    fn what_is_not_a_number_keeps_its_digits() {
        assert_eq!(cn("12345"), "12345");
        assert_eq!(cn("+999 12"), "+99912");
        assert_eq!(cn("abc"), "abc");
        assert_eq!(cn(""), "");
    }
}
