//! Graphic captchas issued by poolgate itself, where Authing clients fetch them
//! (`GET /api/v2/security/captcha`, `GET /api/v3/get-captcha-code`).
//!
//! The answer stays server-side with a short TTL; a captcha is single use (any
//! check burns it, right or wrong) and bound to the client key that fetched it.
//! The image is a distorted, noisy raster (see [`image`]) wrapped in an SVG
//! document, so the answer is not in the markup; [`provider`] verifies the
//! tokens of third-party challenges (Turnstile, hCaptcha, reCAPTCHA) instead.

pub mod image;
pub mod provider;

use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::Rng;

/// Characters used: no 0/O, 1/I/L look-alikes (the font has no O, I or L),
/// and none of the pairs that this serif font blurs once bent: J (reads as I),
/// S (5), Z (2), B (8). 27 characters, 5 of them: 27^5 = 14 million answers.
pub const ALPHABET: &[u8] = b"23456789ACDEFGHKMNPQRTUVWXY";
/// Answer length.
pub const LEN: usize = 5;

/// A token identifying one issued captcha (hex of 16 random bytes).
pub type Token = String;

struct Issued {
    answer: [u8; LEN],
    client: u128,
    expires: Instant,
}

/// Why a captcha answer was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No such token (never issued, already used, or expired and swept).
    Unknown,
    /// Issued to another client.
    OtherClient,
    /// Expired.
    Expired,
    /// Wrong answer.
    Wrong,
}

impl Rejected {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Unknown => "captcha_unknown",
            Rejected::OtherClient => "captcha_other_client",
            Rejected::Expired => "captcha_expired",
            Rejected::Wrong => "captcha_wrong",
        }
    }
}

/// The server-side store of issued captchas.
pub struct CaptchaStore {
    map: DashMap<Token, Issued>,
    ttl: Duration,
    max: usize,
    len: AtomicUsize,
}

impl CaptchaStore {
    /// A store whose captchas live `ttl`, holding at most `max` at once.
    pub fn new(ttl: Duration, max: usize) -> Self {
        CaptchaStore {
            map: DashMap::new(),
            ttl,
            max,
            len: AtomicUsize::new(0),
        }
    }

    /// Captchas outstanding.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether none is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another captcha may be issued (asked before one is drawn).
    pub fn has_room(&self) -> bool {
        self.len() < self.max
    }

    /// Stores a drawn captcha for `client`; `false` when the store is full.
    pub fn put(&self, token: &str, client: u128, answer: &[u8]) -> bool {
        let Ok(answer) = <[u8; LEN]>::try_from(answer) else {
            return false;
        };
        // Reserve the room first, so racing issues cannot pass the cap.
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let before = self.map.insert(
            token.to_string(),
            Issued {
                answer,
                client,
                expires: Instant::now() + self.ttl,
            },
        );
        if before.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Takes (removes: single use) the captcha of `token`, for
    /// [`crate::store::Issued::check`].
    pub fn take(&self, token: &str) -> Option<crate::store::Issued> {
        let (_, issued) = self.map.remove(token)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(crate::store::Issued {
            client: issued.client,
            answer: issued.answer.to_vec(),
            expired: Instant::now() >= issued.expires,
        })
    }

    /// Drops expired captchas.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let before = self.map.len();
        self.map.retain(|_, v| v.expires > now);
        let after = self.map.len();
        self.len.store(after, Ordering::Relaxed);
        before - after
    }

    /// The answer of `token`, for tests that must solve a captcha: not in a
    /// release build's API (the `test-hooks` feature, on for the crate's own
    /// tests through its dev-dependency on itself).
    #[doc(hidden)]
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn peek_answer(&self, token: &str) -> Option<String> {
        self.map
            .get(token)
            .map(|i| String::from_utf8_lossy(&i.answer).into_owned())
    }
}

/// A captcha just drawn: its token, answer and image.
pub struct Fresh {
    /// The token that names it.
    pub token: Token,
    /// The characters to type.
    pub answer: [u8; LEN],
    /// The image: an SVG document wrapping a PNG (see [`image::svg_wrapping`]).
    pub svg: String,
}

impl Fresh {
    /// Draws a new captcha with a random answer and token.
    pub fn new() -> Self {
        let mut rng = rand::rng();
        let mut answer = [0u8; LEN];
        for a in &mut answer {
            *a = ALPHABET[rng.random_range(0..ALPHABET.len())];
        }
        let token: String = (0..16).fold(String::with_capacity(32), |mut s, _| {
            let _ = write!(s, "{:02x}", rng.random::<u8>());
            s
        });
        // The base64 payload is random text: in about one captcha in 10^4 it
        // spells the answer by chance. Redraw then, so a check (or a scraper)
        // searching the markup for the answer never finds it.
        let mut svg = image::svg_wrapping(&image::png(&answer, &mut rng));
        for _ in 0..8 {
            if !contains_ignore_case(svg.as_bytes(), &answer) {
                break;
            }
            svg = image::svg_wrapping(&image::png(&answer, &mut rng));
        }
        Fresh { token, answer, svg }
    }
}

impl Default for Fresh {
    fn default() -> Self {
        Self::new()
    }
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether `given` (trimmed, any case) is `answer`.
pub fn answer_matches(answer: &[u8], given: &str) -> bool {
    let given = given.trim().as_bytes();
    given.len() == answer.len()
        && given
            .iter()
            .zip(answer.iter())
            .all(|(g, a)| g.eq_ignore_ascii_case(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alphabet_char_has_a_glyph() {
        let font = ::captcha::Captcha::new().supported_chars();
        for &c in ALPHABET {
            assert!(font.contains(&char::from(c)), "{}", c as char);
        }
    }

    #[test]
    fn svg_wraps_a_png_and_hides_the_answer() {
        for _ in 0..20 {
            let f = Fresh::new();
            let answer = std::str::from_utf8(&f.answer).unwrap();
            assert!(f
                .svg
                .starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
            assert!(f.svg.ends_with("</svg>"));
            // Every attribute value is quoted and free of markup characters.
            let b64 = f
                .svg
                .split("href=\"data:image/png;base64,")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            assert!(b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
            let png =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
            // Outside the base64 payload the markup has no trace of the answer.
            let markup = f.svg.replace(b64, "");
            assert!(!markup.contains(answer), "{answer} in {markup}");
            assert!(!markup
                .to_ascii_lowercase()
                .contains(&answer.to_ascii_lowercase()));
        }
    }

    fn issue(s: &CaptchaStore, client: u128) -> Option<(Token, String)> {
        let f = Fresh::new();
        s.put(&f.token, client, &f.answer)
            .then_some((f.token, f.svg))
    }

    fn verify(s: &CaptchaStore, t: &str, client: u128, answer: &str) -> Result<(), Rejected> {
        crate::store::Issued::check(s.take(t), client, answer)
    }

    #[test]
    fn single_use_bound_and_case_insensitive() {
        let s = CaptchaStore::new(Duration::from_secs(60), 10);
        let (t, svg) = issue(&s, 1).unwrap();
        let answer = s.peek_answer(&t).unwrap();
        assert!(
            !svg.contains(&answer),
            "the answer must not be in the markup"
        );
        assert_eq!(verify(&s, &t, 1, &answer.to_lowercase()), Ok(()));
        assert_eq!(verify(&s, &t, 1, &answer), Err(Rejected::Unknown));
        let (t, _) = issue(&s, 1).unwrap();
        let answer = s.peek_answer(&t).unwrap();
        assert_eq!(verify(&s, &t, 2, &answer), Err(Rejected::OtherClient));
        let (t, _) = issue(&s, 1).unwrap();
        assert_eq!(verify(&s, &t, 1, "????"), Err(Rejected::Wrong));
        assert!(s.is_empty());
    }

    #[test]
    fn cap_and_expiry() {
        let s = CaptchaStore::new(Duration::from_millis(1), 2);
        let (t, _) = issue(&s, 1).unwrap();
        issue(&s, 1).unwrap();
        assert!(!s.has_room());
        assert!(issue(&s, 1).is_none());
        std::thread::sleep(Duration::from_millis(5));
        let a = s.peek_answer(&t).unwrap();
        assert_eq!(verify(&s, &t, 1, &a), Err(Rejected::Expired));
        assert_eq!(s.sweep(), 1);
        assert!(s.is_empty());
    }
}
