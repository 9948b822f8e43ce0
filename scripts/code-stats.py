#!/usr/bin/env python3
"""The longest functions and the structs with the most fields in the workspace's Rust sources.

    scripts/code-stats.py [N] [DIR...]   # default: 10, the workspace's crates

Counts lines from a `fn` line to the line that closes its body at the same indentation
(rustfmt's layout); tests (files under tests/, `mod tests` blocks) are left out. A struct's
size is its number of named fields.
"""
import os
import re
import sys

FN = re.compile(r'^(\s*)(pub(\([^)]*\))? )?(const )?(async )?(unsafe )?(extern "C" )?fn (\w+)')
STRUCT = re.compile(r'^(\s*)(pub(\([^)]*\))? )?struct (\w+)\s*(<[^{]*>)?\s*(where[^{]*)?\{\s*$')
FIELD = re.compile(r'^\s*(pub(\([^)]*\))? )?(r#)?\w+\s*:')


def rust_files(dirs):
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            subdirs[:] = [s for s in subdirs if s not in ("target", "tests", "fuzz")]
            for f in files:
                if f.endswith(".rs") and f != "tests.rs":
                    yield os.path.join(root, f)


def scan(path):
    fns, structs = [], []
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r'^\s*mod tests\b', line) or re.match(r'^\s*#\[cfg\(test\)\]\s*$', line) and i + 1 < len(lines) and "mod " in lines[i + 1]:
            break  # unit tests sit at the end of a file
        m = FN.match(line)
        if m and not line.rstrip().endswith(";"):
            indent = m.group(1)
            j = i
            # the body closes with `}` at the fn's indentation
            while j < len(lines) and not (lines[j] == indent + "}" or (j == i and line.rstrip().endswith("}"))):
                j += 1
                if j < len(lines) and FN.match(lines[j]) and len(FN.match(lines[j]).group(1)) <= len(indent) and not lines[j - 1].rstrip().endswith(("{", ",", "(")):
                    pass
            if j < len(lines):
                fns.append((j - i + 1, m.group(8), f"{path}:{i + 1}"))
        s = STRUCT.match(line)
        if s:
            indent = s.group(1)
            j, n, depth = i + 1, 0, 0
            while j < len(lines) and lines[j] != indent + "}":
                if depth == 0 and FIELD.match(lines[j]) and len(lines[j]) - len(lines[j].lstrip()) == len(indent) + 4:
                    n += 1
                j += 1
            structs.append((n, s.group(4), f"{path}:{i + 1}"))
        i += 1
    return fns, structs


def main():
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and args[0].isdigit() else 10
    dirs = args or [d for d in ("core", "overlay", "transport", "media", "ffi", "sim", "cli", "client", "server", "testkit")
                    if os.path.isdir(d)]
    fns, structs = [], []
    for f in rust_files(dirs):
        a, b = scan(f)
        fns += a
        structs += b
    print(f"{'lines':>6}  function")
    for length, name, where in sorted(fns, reverse=True)[:n]:
        print(f"{length:>6}  {name}  ({where})")
    print(f"\n{'fields':>6}  struct")
    for count, name, where in sorted(structs, reverse=True)[:n]:
        print(f"{count:>6}  {name}  ({where})")


if __name__ == "__main__":
    main()
