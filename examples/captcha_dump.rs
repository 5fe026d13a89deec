//! Dumps captchas with their answers, for the solver benchmark
//! (`benches/captcha_solver/`): `cargo run --release --example captcha_dump -- N OUTDIR`.
//!
//! Writes `OUTDIR/new/<i>.png`: the PNG inside the SVG that poolgate serves now
//! (drawn by `poolgate::captcha::Fresh::new`, exactly as issued), and
//! `OUTDIR/old/<i>.svg`: a captcha of the OLD approach (the stroke-font SVG that
//! poolgate served before issue 10), kept here only so the benchmark can show
//! what the template matcher did to it. Answers go to `OUTDIR/new.tsv` and
//! `OUTDIR/old.tsv` (`<i>\t<answer>` per line), never into file names, and
//! `OUTDIR/font/<c>.png`: each character of the font, undistorted, and
//! `OUTDIR/old/font.json`: the old stroke font.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use base64::Engine as _;
use rand::Rng;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: captcha_dump N OUTDIR");
    let out = std::path::PathBuf::from(args.next().expect("usage: captcha_dump N OUTDIR"));
    for d in ["new", "old", "font"] {
        std::fs::create_dir_all(out.join(d)).expect("create OUTDIR");
    }
    let mut new_tsv = std::fs::File::create(out.join("new.tsv")).expect("new.tsv");
    let mut old_tsv = std::fs::File::create(out.join("old.tsv")).expect("old.tsv");
    let mut rng = rand::rng();
    let mut drawing = std::time::Duration::ZERO;
    let mut bytes = 0;
    for i in 0..n {
        let t = Instant::now();
        let fresh = poolgate::captcha::Fresh::new();
        drawing += t.elapsed();
        bytes += fresh.svg.len();
        let b64 = fresh
            .svg
            .split("href=\"data:image/png;base64,")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("an SVG wrapping a PNG");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64 PNG");
        std::fs::write(out.join(format!("new/{i}.png")), png).expect("write png");
        writeln!(new_tsv, "{i}\t{}", String::from_utf8_lossy(&fresh.answer)).expect("tsv");

        let mut answer = [0u8; OLD_LEN];
        for a in &mut answer {
            *a = OLD_ALPHABET[rng.random_range(0..OLD_ALPHABET.len())];
        }
        let svg = render_svg(&answer, &mut rng);
        std::fs::write(out.join(format!("old/{i}.svg")), svg).expect("write svg");
        writeln!(old_tsv, "{i}\t{}", String::from_utf8_lossy(&answer)).expect("tsv");
    }
    std::fs::write(out.join("alphabet.txt"), poolgate::captcha::ALPHABET).expect("alphabet");
    // The old stroke font (it was in the repository): the old matcher's templates.
    let mut font = String::from("{");
    for (k, &c) in OLD_ALPHABET.iter().enumerate() {
        let lines: Vec<String> = glyph(c)
            .iter()
            .map(|l| {
                let pts: Vec<String> = l.iter().map(|(x, y)| format!("[{x},{y}]")).collect();
                format!("[{}]", pts.join(","))
            })
            .collect();
        let sep = if k == 0 { "" } else { "," };
        let _ = write!(font, "{sep}\"{}\":[{}]", char::from(c), lines.join(","));
    }
    font.push('}');
    std::fs::write(out.join("old/font.json"), font).expect("old font");
    // The font's clean glyphs: what an attacker who reads the crate has, and
    // the templates of the benchmark's raster template matcher.
    for &c in poolgate::captcha::ALPHABET {
        let mut g = captcha::Captcha::new();
        g.set_chars(&[char::from(c)]).add_char();
        let area = g.text_area();
        let png = g.extract(area).as_png().expect("glyph png");
        std::fs::write(out.join(format!("font/{}.png", char::from(c))), png).expect("write glyph");
    }
    if n > 0 {
        eprintln!(
            "{n} captchas: {:?} per captcha drawn (debug builds are slower), {} bytes of SVG on average",
            drawing / n as u32,
            bytes / n
        );
    }
}

// ---- THE OLD APPROACH, for the benchmark only ---------------------------
// poolgate's captcha before issue 10: a 4x6 stroke font with small jitter,
// drawn as SVG paths. A template matcher reads it (benches/captcha_solver/);
// nothing in poolgate uses this any more.

const OLD_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const OLD_LEN: usize = 4;

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
fn render_svg(answer: &[u8; OLD_LEN], rng: &mut impl Rng) -> String {
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
