"""Prints the functions of one object that ran, from a callgrind profile, one symbol name per
line in the order the profile first names them (see link/profile.sh).

Usage: callgrind_functions.py PROFILE OBJECT_NAME"""
import re
import sys

SPEC = re.compile(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?")


def main(profile, object_name):
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
            print(symbol)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
