"""Prints the functions of a binary that ran, from callgrind profiles of it, one symbol name
per line in the order of their addresses in that binary (see link/profile.sh).

Usage: callgrind_functions.py BINARY PROFILE..."""
import os
import re
import subprocess
import sys

SPEC = re.compile(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?")


def functions(profile, object_name):
    """The object's functions that ran, in the order the profile first names them."""
    names = {"ob": {}, "fn": {}}
    current = {"ob": None, "fn": None}
    after_call = False
    seen = set()
    for line in open(profile, errors="replace"):
        spec = SPEC.match(line.rstrip("\n"))
        if spec:
            called, kind, number, name = spec.groups()
            if name:
                names[kind][number] = name
            if not called:
                current[kind] = names[kind].get(number)
            continue
        if line.startswith("calls="):
            after_call = True  # the next cost line is the call's, not this function's own
            continue
        if not (line[:1].isdigit() or line[:1] in "+-*"):
            continue
        if after_call:
            after_call = False
            continue
        ob, fn = current["ob"], current["fn"]
        if not (ob and fn and ob.rsplit("/", 1)[-1] == object_name):
            continue
        symbol = fn.split("'", 1)[0]  # callgrind marks recursion levels as name'2
        if symbol not in seen and not symbol.startswith(("0x", "(")):
            seen.add(symbol)
            yield symbol


def addresses(binary):
    """Each function symbol's address in the binary."""
    listing = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
    found = {}
    for line in listing.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            found.setdefault(parts[2], int(parts[0], 16))
    return found


def main(binary, profiles):
    # In the order the binary had them: what the compiler and the linker put side by side
    # (a crate's functions, SQLite's in its source order) stays side by side.
    where = addresses(binary)
    ran = set()
    for profile in profiles:
        ran.update(functions(profile, os.path.basename(binary)))
    for symbol in sorted(ran, key=lambda s: (where.get(s, 1 << 64), s)):
        print(symbol)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
