//! The cost of drawing one captcha, as `GET /api/v2/security/captcha` and
//! `GET /api/v3/get-captcha-code` pay it (issue 10): the raster image, its
//! SVG wrapping, and the whole `Fresh::new` (answer, token, both).
//!
//! `cargo bench --bench captcha`. The endpoint is rate-limited per client, so
//! a few hundred µs to a few ms per captcha is acceptable; tens of ms is not.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use poolgate::captcha::{image, Fresh};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("captcha");
    g.sample_size(50);
    let mut rng = rand::rng();
    g.bench_function("png", |b| {
        b.iter(|| image::png(black_box(b"ACDE7"), &mut rng))
    });
    let png = image::png(b"ACDE7", &mut rng);
    g.bench_function("svg_wrapping", |b| {
        b.iter(|| image::svg_wrapping(black_box(&png)))
    });
    g.bench_function("fresh", |b| b.iter(Fresh::new));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
