"""Checks the relative links and #anchors of the given Markdown files.

README is a front page and the reference lives in docs/, one page per
subject, linked both ways; a moved section or a renamed heading must not
leave a dead link behind. Anchors follow GitHub's rule (lower case,
punctuation dropped, spaces to hyphens, -1/-2 for repeats).

    python3 .ci/check-doc-links.py README.md SECURITY.md docs/*.md
"""
import pathlib
import re
import sys


def slug(heading):
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path):
    out, seen, fence = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,6} ", line):
            a = slug(line.split(" ", 1)[1])
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def main(files):
    bad = 0
    for f in files:
        p = pathlib.Path(f)
        fence = False
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                file, _, anchor = target.partition("#")
                tp = (p.parent / file).resolve() if file else p.resolve()
                if not tp.exists():
                    print(f"{f}:{i}: missing file {target}")
                    bad += 1
                elif anchor and tp.suffix == ".md" and anchor not in anchors(tp):
                    print(f"{f}:{i}: missing anchor {target}")
                    bad += 1
    print(f"{len(files)} files, bad links: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
