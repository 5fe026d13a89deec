//! Graphic captchas issued by poolgate itself, where Authing clients fetch them
//! (`GET /api/v2/security/captcha`, `GET /api/v3/get-captcha-code`).
//!
//! The answer stays server-side with a short TTL; a captcha is single use (any
//! check burns it, right or wrong) and bound to the client key that fetched it.
//! Glyphs are drawn as jittered stroke paths, not SVG text, so the answer is not
//! in the markup.

use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::Rng;

/// Characters used: no 0/O, 1/I/L look-alikes.
const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Answer length.
pub const LEN: usize = 4;

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

    /// Issues a captcha for `client`: returns its token and SVG, or `None` when full.
    pub fn issue(&self, client: u128) -> Option<(Token, String)> {
        if self.len() >= self.max {
            return None;
        }
        let Fresh { token, answer, svg } = Fresh::new();
        self.map.insert(
            token.clone(),
            Issued {
                answer,
                client,
                expires: Instant::now() + self.ttl,
            },
        );
        self.len.fetch_add(1, Ordering::Relaxed);
        Some((token, svg))
    }

    /// Checks `answer` for `token` from `client`, burning the captcha either way.
    pub fn verify(&self, token: &str, client: u128, answer: &str) -> Result<(), Rejected> {
        let Some((_, issued)) = self.map.remove(token) else {
            return Err(Rejected::Unknown);
        };
        self.len.fetch_sub(1, Ordering::Relaxed);
        if issued.client != client {
            return Err(Rejected::OtherClient);
        }
        if Instant::now() >= issued.expires {
            return Err(Rejected::Expired);
        }
        if answer_matches(&issued.answer, answer) {
            Ok(())
        } else {
            Err(Rejected::Wrong)
        }
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

    /// The answer of `token`, for tests that must solve a captcha.
    #[doc(hidden)]
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
    /// The SVG image.
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
        let svg = render_svg(&answer, &mut rng);
        Fresh { token, answer, svg }
    }
}

impl Default for Fresh {
    fn default() -> Self {
        Self::new()
    }
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

/// Stroke font on a 4x6 grid: each glyph is a list of polylines.
fn glyph(c: u8) -> &'static [&'static [(u8, u8)]] {
    match c {
        b'2' => &[&[(0, 1), (1, 0), (3, 0), (4, 1), (4, 2), (0, 6), (4, 6)]],
        b'3' => &[&[(0, 0), (4, 0), (2, 3), (4, 4), (4, 5), (3, 6), (0, 6)]],
        b'4' => &[&[(3, 6), (3, 0), (0, 4), (4, 4)]],
        b'5' => &[&[
            (4, 0),
            (0, 0),
            (0, 3),
            (3, 3),
            (4, 4),
            (4, 5),
            (3, 6),
            (0, 6),
        ]],
        b'6' => &[&[(4, 0), (1, 0), (0, 2), (0, 6), (4, 6), (4, 3), (0, 3)]],
        b'7' => &[&[(0, 0), (4, 0), (1, 6)]],
        b'8' => &[&[(0, 0), (4, 0), (4, 6), (0, 6), (0, 0)], &[(0, 3), (4, 3)]],
        b'9' => &[&[(4, 3), (0, 3), (0, 0), (4, 0), (4, 6), (0, 6)]],
        b'A' => &[&[(0, 6), (2, 0), (4, 6)], &[(1, 4), (3, 4)]],
        b'B' => &[
            &[(0, 0), (0, 6), (3, 6), (4, 5), (4, 4), (3, 3), (0, 3)],
            &[(0, 0), (3, 0), (4, 1), (3, 3)],
        ],
        b'C' => &[&[(4, 0), (0, 0), (0, 6), (4, 6)]],
        b'D' => &[&[(0, 0), (0, 6), (3, 6), (4, 4), (4, 2), (3, 0), (0, 0)]],
        b'E' => &[&[(4, 0), (0, 0), (0, 6), (4, 6)], &[(0, 3), (3, 3)]],
        b'F' => &[&[(4, 0), (0, 0), (0, 6)], &[(0, 3), (3, 3)]],
        b'G' => &[&[(4, 0), (0, 0), (0, 6), (4, 6), (4, 3), (2, 3)]],
        b'H' => &[&[(0, 0), (0, 6)], &[(4, 0), (4, 6)], &[(0, 3), (4, 3)]],
        b'J' => &[&[(4, 0), (4, 6), (0, 6), (0, 4)]],
        b'K' => &[&[(0, 0), (0, 6)], &[(4, 0), (0, 3), (4, 6)]],
        b'M' => &[&[(0, 6), (0, 0), (2, 3), (4, 0), (4, 6)]],
        b'N' => &[&[(0, 6), (0, 0), (4, 6), (4, 0)]],
        b'P' => &[&[(0, 6), (0, 0), (4, 0), (4, 3), (0, 3)]],
        b'Q' => &[&[(0, 0), (4, 0), (4, 6), (0, 6), (0, 0)], &[(2, 4), (4, 6)]],
        b'R' => &[&[(0, 6), (0, 0), (4, 0), (4, 3), (0, 3), (4, 6)]],
        b'S' => &[&[(4, 0), (0, 0), (0, 3), (4, 3), (4, 6), (0, 6)]],
        b'T' => &[&[(0, 0), (4, 0)], &[(2, 0), (2, 6)]],
        b'U' => &[&[(0, 0), (0, 6), (4, 6), (4, 0)]],
        b'V' => &[&[(0, 0), (2, 6), (4, 0)]],
        b'W' => &[&[(0, 0), (1, 6), (2, 3), (3, 6), (4, 0)]],
        b'X' => &[&[(0, 0), (4, 6)], &[(4, 0), (0, 6)]],
        b'Y' => &[&[(0, 0), (2, 3), (4, 0)], &[(2, 3), (2, 6)]],
        b'Z' => &[&[(0, 0), (4, 0), (0, 6), (4, 6)]],
        _ => &[],
    }
}

/// Draws the answer as jittered strokes with noise lines.
fn render_svg(answer: &[u8; LEN], rng: &mut impl Rng) -> String {
    const W: f32 = 150.0;
    const H: f32 = 50.0;
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}"><rect width="100%" height="100%" fill="#f4f4f4"/>"##
    );
    for _ in 0..5 {
        let _ = write!(
            s,
            r##"<path d="M{:.1} {:.1} Q{:.1} {:.1} {:.1} {:.1}" stroke="#{:06x}" stroke-width="1.5" fill="none"/>"##,
            rng.random_range(0.0..20.0),
            rng.random_range(5.0..H - 5.0),
            rng.random_range(40.0..110.0),
            rng.random_range(0.0..H),
            rng.random_range(W - 20.0..W),
            rng.random_range(5.0..H - 5.0),
            rng.random_range(0x404040..0xa0a0a0u32)
        );
    }
    for (i, &c) in answer.iter().enumerate() {
        let x0 = 14.0 + i as f32 * 32.0 + rng.random_range(-3.0..3.0);
        let y0 = 8.0 + rng.random_range(-3.0..3.0);
        let sx = rng.random_range(4.5..6.0);
        let sy = rng.random_range(5.0..5.8);
        let skew = rng.random_range(-0.35..0.35);
        let color = rng.random_range(0x101010..0x705070u32);
        let _ = write!(
            s,
            r##"<path stroke="#{color:06x}" stroke-width="2.6" fill="none" stroke-linecap="round" d=""##
        );
        for line in glyph(c) {
            for (j, &(gx, gy)) in line.iter().enumerate() {
                let x = x0
                    + f32::from(gx) * sx
                    + f32::from(gy) * sy * skew
                    + rng.random_range(-0.8..0.8);
                let y = y0 + f32::from(gy) * sy + rng.random_range(-0.8..0.8);
                let _ = write!(s, "{}{x:.1} {y:.1}", if j == 0 { "M" } else { " L" });
            }
        }
        s.push_str("\"/>");
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alphabet_char_has_a_glyph() {
        for &c in ALPHABET {
            assert!(!glyph(c).is_empty(), "{}", c as char);
        }
    }

    #[test]
    fn single_use_bound_and_case_insensitive() {
        let s = CaptchaStore::new(Duration::from_secs(60), 10);
        let (t, svg) = s.issue(1).unwrap();
        let answer = s.peek_answer(&t).unwrap();
        assert!(
            !svg.contains(&answer),
            "the answer must not be in the markup"
        );
        assert_eq!(s.verify(&t, 1, &answer.to_lowercase()), Ok(()));
        assert_eq!(s.verify(&t, 1, &answer), Err(Rejected::Unknown));
        let (t, _) = s.issue(1).unwrap();
        let answer = s.peek_answer(&t).unwrap();
        assert_eq!(s.verify(&t, 2, &answer), Err(Rejected::OtherClient));
        let (t, _) = s.issue(1).unwrap();
        assert_eq!(s.verify(&t, 1, "????"), Err(Rejected::Wrong));
        assert!(s.is_empty());
    }

    #[test]
    fn cap_and_expiry() {
        let s = CaptchaStore::new(Duration::from_millis(1), 2);
        let (t, _) = s.issue(1).unwrap();
        s.issue(1).unwrap();
        assert!(s.issue(1).is_none());
        std::thread::sleep(Duration::from_millis(5));
        let a = s.peek_answer(&t).unwrap();
        assert_eq!(s.verify(&t, 1, &a), Err(Rejected::Expired));
        assert_eq!(s.sweep(), 1);
        assert!(s.is_empty());
    }
}
