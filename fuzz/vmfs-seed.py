#!/usr/bin/env python3
"""Turns a VMFS image into a seed of the `vmfs` fuzz target: a mode byte, then one
`u32 offset, u16 length, bytes` record per non-zero run (zero gaps under 16 bytes kept
inside a run) of the image's first 1 GiB; runs of one repeated byte are cut to 4 KiB.

usage: vmfs-seed.py IMAGE MODE_BYTE OUT"""
import re
import struct
import sys

LIMIT = 1 << 30
image, mode, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parts = [bytes([mode])]
with open(image, "rb") as f:
    at = 0
    while at < LIMIT:
        chunk = f.read(1 << 24)
        if not chunk:
            break
        for m in re.finditer(rb"[^\0](?:[^\0]|\0{1,15}(?=[^\0]))*", chunk):
            # Stretches of one repeated byte (stale to-be-zeroed data, full bitmaps) keep
            # only their first 4 KiB: the parsers never look further into them, and the
            # inputs stay small.
            pieces, start = [], 0
            for r in re.finditer(rb"(.)\1{4096,}", m.group(), re.DOTALL):
                pieces.append((start, r.start() + 4096))
                start = r.end()
            pieces.append((start, len(m.group())))
            for lo, hi in pieces:
                run = m.group()[lo:hi]
                for i in range(0, len(run), 0xFFFF):
                    piece = run[i : i + 0xFFFF]
                    parts.append(struct.pack("<IH", at + m.start() + lo + i, len(piece)) + piece)
        at += len(chunk)
with open(out, "wb") as f:
    f.write(b"".join(parts))
