//! Drawing: the answer as a distorted, noisy PNG (the `captcha` crate), served
//! inside an SVG document so the `image/svg+xml` responses Authing clients
//! expect stay as they were.
//!
//! The glyphs are bitmaps of a serif font, so no character of the answer is in
//! the markup: the SVG carries only a base64 PNG. Every parameter of the
//! distortion is drawn per captcha, so two captchas of the same answer differ
//! in shape, not only in noise. `benches/captcha_solver/` measures how often
//! tesseract reads the result (docs/enforcement.md, "Captcha").

use ::captcha::filters::{Dots, Noise, Wave};
use ::captcha::Captcha;
use base64::Engine as _;
use rand::Rng;

/// Width of the image, in pixels: the widest answer (MWMWM: 250 px of glyph
/// bitmaps, padding included) fits whole.
pub const WIDTH: u32 = 250;
/// Height of the image, in pixels.
pub const HEIGHT: u32 = 70;

/// Draws `answer` (characters of the font: see `super::ALPHABET`) as a PNG.
pub fn png(answer: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut c = Captcha::new();
    for &b in answer {
        c.set_chars(&[char::from(b)]).add_char();
    }
    // Waves of random frequency and amplitude bend each captcha differently;
    // they are applied on the crate's large canvas, before cropping, so no
    // glyph is pushed out of the picture.
    c.apply_filter(Wave::new(rng.random_range(5.0..8.0), rng.random_range(5.0..8.0)).horizontal())
        .apply_filter(Wave::new(rng.random_range(4.0..7.0), rng.random_range(2.0..4.0)).vertical())
        .view(WIDTH, HEIGHT);
    c.apply_filter(Noise::new(rng.random_range(0.04..0.08)))
        .apply_filter(
            Dots::new(rng.random_range(6..10))
                .min_radius(2)
                .max_radius(3),
        );
    // The crate's PNG encoder only fails on an impossible image (zero size).
    let png = c.as_png().unwrap_or_default();
    strike(&png, rng).unwrap_or(png)
}

/// What the crate cannot do: ripples the image (see below), draws curves of
/// the glyphs' stroke width across the text (they join the characters, which
/// defeats segmenting them), and re-encodes it as a grayscale PNG.
fn strike(png: &[u8], rng: &mut impl Rng) -> Option<Vec<u8>> {
    use std::f32::consts::TAU;
    let src = ::image::load_from_memory(png).ok()?.to_luma8();
    let (w, h) = (src.width() as f32, src.height() as f32);
    // A ripple of random phase and a period about a glyph's size: rows shift
    // sideways and columns up and down by a few pixels, so every stroke
    // wobbles and no glyph keeps the font's exact shape (the crate's waves
    // are longer and always start in the same phase).
    let ripple = |amp: (f32, f32), period: (f32, f32), rng: &mut dyn FnMut() -> f32| {
        let a = amp.0 + (amp.1 - amp.0) * rng();
        let p = period.0 + (period.1 - period.0) * rng();
        let phase = TAU * rng();
        move |t: f32| a * (TAU * t / p + phase).sin()
    };
    let mut unit = || rng.random_range(0.0..1.0f32);
    let dx = ripple((1.0, 1.8), (20.0, 32.0), &mut unit);
    let dy = ripple((1.0, 1.8), (22.0, 36.0), &mut unit);
    let mut g = ::image::GrayImage::from_fn(src.width(), src.height(), |x, y| {
        let sx = (x as f32 + dx(y as f32)).round();
        let sy = (y as f32 + dy(x as f32)).round();
        if sx < 0.0 || sy < 0.0 || sx >= w || sy >= h {
            ::image::Luma([255])
        } else {
            *src.get_pixel(sx as u32, sy as u32)
        }
    });
    for _ in 0..STRIKES {
        let x0 = rng.random_range(0.05..0.2) * w;
        let x1 = rng.random_range(0.8..0.95) * w;
        let yc = rng.random_range(0.35..0.65) * h;
        let slope = rng.random_range(-0.15..0.15);
        let amp = rng.random_range(0.05..0.15) * h;
        let period = rng.random_range(0.3..0.7) * w;
        let phase = rng.random_range(0.0..TAU);
        let mut x = x0;
        while x < x1 {
            let y = yc + slope * (x - w / 2.0) + amp * (TAU * x / period + phase).sin();
            for dy in 0..2 {
                let (px, py) = (x as u32, (y as i32 + dy).max(0) as u32);
                if px < g.width() && py < g.height() {
                    g.put_pixel(px, py, ::image::Luma([0]));
                }
            }
            x += 0.5;
        }
    }
    let mut out = Vec::with_capacity(8 * 1024);
    ::image::DynamicImage::ImageLuma8(g)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            ::image::ImageOutputFormat::Png,
        )
        .ok()?;
    Some(out)
}

const STRIKES: usize = 2;

/// An SVG document of the image size that shows `png` (as a data URI).
///
/// Both `href` (SVG 2) and `xlink:href` (SVG 1.1, older renderers and some
/// WebViews) name the image.
pub fn svg_wrapping(png: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let mut s = String::with_capacity(b64.len() * 2 + 400);
    s.push_str(&format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"><image width="{WIDTH}" height="{HEIGHT}" href="data:image/png;base64,"#
    ));
    s.push_str(&b64);
    s.push_str(r#"" xlink:href="data:image/png;base64,"#);
    s.push_str(&b64);
    s.push_str(r#""/></svg>"#);
    s
}
