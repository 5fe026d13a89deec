#!/usr/bin/env python3
"""Solver benchmark for poolgate's captcha (issue 10). See README.md here.

Reads a directory written by `cargo run --release --example captcha_dump -- N DIR`
and reports how many captchas each solver reads exactly:

  old+template   the OLD stroke-font SVG (before issue 10), read by a template
                 matcher over the glyph paths and the old font
  new+tesseract  the raster captcha poolgate serves now, read by tesseract after
                 simple preprocessing (several variants; the best one counts)
  new+template   the raster captcha, read by normalized cross-correlation with
                 the font's own glyph bitmaps (the font ships with the crate)

Exit status: 0, or 1 when --max-rate is given and tesseract (its best
variant) reads more than that fraction of the NEW captchas, or --max-any-rate
and the best solver of any kind does.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageFilter, ImageOps

NEW_ALPHABET = "23456789ACDEFGHKMNPQRTUVWXY"  # replaced by DIR/alphabet.txt


def labels(path):
    out = {}
    with open(path) as f:
        for line in f:
            i, a = line.rstrip("\n").split("\t")
            out[int(i)] = a
    return out


# ---- old + template ---------------------------------------------------------
# The old SVG draws each glyph as one <path stroke-linecap="round" d="M.. L.. M..">
# from a 4x6 stroke font (it was in the repository; the dump tool writes it to
# old/font.json). A glyph is its stroke structure (points per polyline) and its
# points scaled into the unit box; the font glyph of the same structure, sheared
# by the best of a few slants, that is nearest names it. No training needed.

GLYPH_PATH = re.compile(r'stroke-linecap="round" d="([^"]+)"')


def unit_box(lines):
    xs = [x for l in lines for x, _ in l]
    ys = [y for l in lines for _, y in l]
    w = max(max(xs) - min(xs), 1e-3)
    h = max(max(ys) - min(ys), 1e-3)
    return [((x - min(xs)) / w, (y - min(ys)) / h) for l in lines for x, y in l]


def old_glyphs(svg):
    glyphs = []
    for d in GLYPH_PATH.findall(svg):
        lines = [[tuple(map(float, p.split())) for p in part.split("L")] for part in d.split("M")[1:]]
        glyphs.append((tuple(len(l) for l in lines), unit_box(lines)))
    return glyphs


def old_template(d, n):
    lab = labels(os.path.join(d, "old.tsv"))
    with open(os.path.join(d, "old", "font.json")) as f:
        font = json.load(f)
    templates = []
    for c, lines in font.items():
        shape = tuple(len(l) for l in lines)
        for k in range(-10, 11):
            shear = k * 0.05
            templates.append((shape, unit_box([[(x + y * shear, y) for x, y in l] for l in lines]), c))
    solved = 0
    for i in range(n):
        with open(os.path.join(d, "old", f"{i}.svg")) as f:
            guess = ""
            for shape, pts in old_glyphs(f.read()):
                best = (float("inf"), "?")
                for tshape, tpts, c in templates:
                    if tshape == shape:
                        dist = sum((a - x) ** 2 + (b - y) ** 2 for (a, b), (x, y) in zip(pts, tpts))
                        best = min(best, (dist, c))
                guess += best[1]
        solved += guess == lab[i]
    return solved


# ---- new + tesseract ----------------------------------------------------------


def prep(img, variant):
    g = ImageOps.grayscale(img)
    if variant == "gray-x3":
        return g.resize((g.width * 3, g.height * 3), Image.LANCZOS)
    if variant == "thr-median3-x3":
        g = g.point(lambda p: 255 if p > 128 else 0)
        g = g.filter(ImageFilter.MedianFilter(3))
        return g.resize((g.width * 3, g.height * 3), Image.NEAREST)
    if variant == "median3-thr-median5-x3":
        g = g.filter(ImageFilter.MedianFilter(3))
        g = g.point(lambda p: 255 if p > 140 else 0)
        g = g.resize((g.width * 3, g.height * 3), Image.NEAREST)
        return g.filter(ImageFilter.MedianFilter(5))
    if variant == "x4-median7-thr":
        g = g.resize((g.width * 4, g.height * 4), Image.BICUBIC)
        g = g.filter(ImageFilter.MedianFilter(7))
        return g.point(lambda p: 255 if p > 150 else 0)
    raise ValueError(variant)


VARIANTS = ["gray-x3", "thr-median3-x3", "median3-thr-median5-x3", "x4-median7-thr"]
PSMS = [7, 8]


def tesseract(png_path, psm):
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    r = subprocess.run(
        ["tesseract", png_path, "stdout", "--psm", str(psm), "-l", "eng",
         "-c", f"tessedit_char_whitelist={NEW_ALPHABET}"],
        capture_output=True, text=True, env=env,
    )
    return re.sub(r"\s", "", r.stdout).upper()


def new_tesseract(d, n, jobs, variants):
    lab = labels(os.path.join(d, "new.tsv"))
    combos = [(v, p) for v in variants for p in PSMS]
    solved = {c: 0 for c in combos}
    chars = {c: 0 for c in combos}
    tmp = tempfile.mkdtemp(prefix="captcha_solver_")

    def one(i):
        img = Image.open(os.path.join(d, "new", f"{i}.png"))
        res = {}
        for v in variants:
            p = os.path.join(tmp, f"{i}-{v}.png")
            prep(img, v).save(p)
            for psm in PSMS:
                res[(v, psm)] = tesseract(p, psm)
            os.remove(p)
        return i, res

    with ThreadPoolExecutor(max_workers=jobs) as ex:
        for i, res in ex.map(one, range(n)):
            for c, guess in res.items():
                solved[c] += guess == lab[i]
                chars[c] += sum(a == b for a, b in zip(guess, lab[i])) if len(guess) == len(lab[i]) else 0
    os.rmdir(tmp)
    return solved, chars


# ---- new + template -----------------------------------------------------------
# Normalized cross-correlation of the (cleaned) captcha with each glyph bitmap
# of the crate's font (written by the dump tool to font/<c>.png), then the best
# non-overlapping matches, left to right, as many as the answer is long.


def new_template(d, n):
    try:
        import numpy as np
    except ImportError:
        return None
    from numpy.lib.stride_tricks import sliding_window_view

    lab = labels(os.path.join(d, "new.tsv"))
    glyphs = {}
    for c in NEW_ALPHABET:
        g = np.asarray(ImageOps.grayscale(Image.open(os.path.join(d, "font", f"{c}.png"))), dtype=np.float32)
        glyphs[c] = 255.0 - g  # ink = high
    solved = 0
    for i in range(n):
        img = ImageOps.grayscale(Image.open(os.path.join(d, "new", f"{i}.png")))
        img = img.filter(ImageFilter.MedianFilter(3))
        a = 255.0 - np.asarray(img, dtype=np.float32)
        cands = []
        for c, t in glyphs.items():
            th, tw = t.shape
            if th > a.shape[0] or tw > a.shape[1]:
                continue
            win = sliding_window_view(a, (th, tw))
            tz = (t - t.mean()) / (t.std() + 1e-6)
            wm = win.mean(axis=(2, 3))
            ws = win.std(axis=(2, 3)) + 1e-6
            score = (np.einsum("ijkl,kl->ij", win, tz) / (th * tw)) / ws
            del wm
            for _ in range(6):
                y, x = np.unravel_index(np.argmax(score), score.shape)
                cands.append((float(score[y, x]), int(x), int(x + tw), c))
                score[:, max(0, x - tw // 2): x + tw // 2 + 1] = -1e9
        cands.sort(reverse=True)
        chosen = []
        for s, x0, x1, c in cands:
            if len(chosen) == len(lab[i]):
                break
            if all(x1 - 4 <= cx0 or x0 + 4 >= cx1 for _, cx0, cx1, _ in chosen):
                chosen.append((s, x0, x1, c))
        guess = "".join(c for _, x0, _, c in sorted(chosen, key=lambda t: t[1]))
        solved += guess == lab[i]
    return solved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-rate", type=float, help="fail if tesseract (best variant) reads more of the new captchas than this")
    ap.add_argument("--max-any-rate", type=float, help="fail if any solver reads more of the new captchas than this")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    n = len(labels(os.path.join(args.dir, "new.tsv")))
    global NEW_ALPHABET
    with open(os.path.join(args.dir, "alphabet.txt")) as f:
        NEW_ALPHABET = f.read().strip()
    out = {"n": n}
    t0 = time.time()

    s = old_template(args.dir, n)
    out["old+template"] = s / n
    print(f"old+template   {s}/{n} = {100 * s / n:.1f} %  (stroke font templates, best slant)")

    solved, chars = new_tesseract(args.dir, n, args.jobs, args.variants.split(","))
    for (v, p), s in sorted(solved.items(), key=lambda kv: -kv[1]):
        print(f"new+tesseract  {s}/{n} = {100 * s / n:.1f} %  ({v}, psm {p}; "
              f"{100 * chars[(v, p)] / (n * 5):.1f} % of characters)")
    best = max(solved.values())
    tess = best / n
    out["new+tesseract"] = tess
    out["new+tesseract by variant"] = {f"{v} psm{p}": s / n for (v, p), s in solved.items()}

    s = new_template(args.dir, n)
    if s is None:
        print("new+template   skipped (numpy not installed)")
    else:
        out["new+template"] = s / n
        print(f"new+template   {s}/{n} = {100 * s / n:.1f} %  (font bitmaps, cross-correlation)")
        best = max(best, s)

    rate = best / n
    out["new best"] = rate
    out["seconds"] = round(time.time() - t0, 1)
    print(f"new captcha, best solver: {100 * rate:.1f} % of {n}  ({out['seconds']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    failed = False
    if args.max_rate is not None and tess > args.max_rate:
        print(f"FAIL: tesseract reads {100 * tess:.1f} %, above {100 * args.max_rate:.0f} %", file=sys.stderr)
        failed = True
    if args.max_any_rate is not None and rate > args.max_any_rate:
        print(f"FAIL: the best solver reads {100 * rate:.1f} %, above {100 * args.max_any_rate:.0f} %", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
