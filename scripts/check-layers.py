#!/usr/bin/env python3
"""Checks the layering that docs/ARCHITECTURE.md promises, from the source:

- no two files of one crate import each other (a `use` or a path through
  `crate::`, `super::` or `self::` that lands in the other file);
- the domain crate has no I/O and no runtime: none of std::fs, std::net,
  std::process, std::thread, tokio in its sources;
- the binary's modules (app/src/main.rs, app/src/cli, app/src/serve,
  app/src/sftp) use the
  `corral` library only: never corral_domain or corral_adapters.

Prints each violation and exits 1 if there is any. Run by scripts/test.sh.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    "domain": "domain/src/lib.rs",
    "adapters": "adapters/src/lib.rs",
    "app (library)": "app/src/lib.rs",
    "app (binary)": "app/src/main.rs",
    "conformance": "tests/src/lib.rs",
    "fixtures": "tests/fixtures/src/lib.rs",
}

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)
PATH_REF = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\}", re.S)


def strip_comments(text):
    # Unit tests (at the end of a file, by convention) are not layers.
    text = text.split("#[cfg(test)]")[0]
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def module_files(root_file):
    """Maps module paths (tuples) to their files, following `mod x;`."""
    mods = {(): root_file}
    stack = [((), root_file)]
    while stack:
        path, f = stack.pop()
        text = strip_comments(open(os.path.join(ROOT, f)).read())
        base = os.path.dirname(f)
        name = os.path.basename(f)
        if name not in ("lib.rs", "main.rs", "mod.rs"):
            base = os.path.join(base, name[:-3])
        for m in MOD_DECL.findall(text):
            for cand in (os.path.join(base, m + ".rs"), os.path.join(base, m, "mod.rs")):
                if os.path.exists(os.path.join(ROOT, cand)):
                    mods[path + (m,)] = cand
                    stack.append((path + (m,), cand))
                    break
    return mods


def resolve(mods, here, kind, segs):
    """The file a path `kind::segs` lands in, seen from module `here`."""
    if kind == "crate":
        start = ()
    elif kind == "super":
        start = here[:-1]
        while segs and segs[0] == "super":
            start, segs = start[:-1], segs[1:]
    else:
        start = here
    best = start
    cur = start
    for s in segs:
        cur = cur + (s,)
        if cur in mods:
            best = cur
        else:
            break
    return mods.get(best)


def imports(mods, here, f):
    text = strip_comments(open(os.path.join(ROOT, f)).read())
    out = set()
    for kind, rest in PATH_REF.findall(text):
        segs = [s for s in rest.split("::") if s and s != "{"]
        t = resolve(mods, here, kind, segs)
        if t:
            out.add(t)
    for kind, rest, group in USE_GROUP.findall(text):
        segs = [s for s in rest.split("::") if s]
        for item in re.split(r"[,\s]+", group):
            first = item.split("::")[0].strip("{} ")
            if first and first not in ("self",):
                t = resolve(mods, here, kind, segs + [first])
                if t:
                    out.add(t)
    # Groups relative to this module: `use child::{A, B}`.
    for name, group in re.findall(r"(?<![:\w])([a-z_][a-z0-9_]*)::\{([^}]*)\}", text):
        if here + (name,) in mods:
            t = resolve(mods, here, "self", [name])
            if t:
                out.add(t)
            for item in re.split(r"[,\s]+", group):
                first = item.split("::")[0].strip("{} ")
                if first and first != "self":
                    t = resolve(mods, here, "self", [name, first])
                    if t:
                        out.add(t)
    # Paths relative to this module: `use child::Item`, `child::f()`.
    for name, rest in re.findall(r"(?<![:\w])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        if here + (name,) in mods:
            segs = [name] + [s for s in rest.split("::") if s]
            t = resolve(mods, here, "self", segs)
            if t:
                out.add(t)
    out.discard(f)
    return out


def main():
    problems = []
    for crate, root in CRATES.items():
        mods = module_files(root)
        graph = {f: imports(mods, path, f) for path, f in mods.items()}
        for a, targets in graph.items():
            for b in targets:
                if a < b and a in graph.get(b, set()):
                    problems.append(f"{crate}: {a} and {b} import each other")
    for dirpath, _, files in os.walk(os.path.join(ROOT, "domain/src")):
        for name in files:
            p = os.path.join(dirpath, name)
            text = strip_comments(open(p).read())
            for bad in ("std::fs", "std::net", "std::process", "std::thread", "tokio"):
                if re.search(r"\b" + re.escape(bad) + r"\b", text):
                    problems.append(f"domain: {os.path.relpath(p, ROOT)} uses {bad}")
    binary = ["app/src/main.rs"]
    for sub in ("app/src/cli", "app/src/serve", "app/src/sftp"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, sub)):
            binary += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in files if n.endswith(".rs")]
    for f in binary:
        text = strip_comments(open(os.path.join(ROOT, f)).read())
        for bad in ("corral_domain", "corral_adapters"):
            if bad in text:
                problems.append(f"binary: {f} uses {bad} (use the corral library's re-exports)")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"layers: ok ({len(CRATES)} crates checked)")


if __name__ == "__main__":
    main()
