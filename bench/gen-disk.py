#!/usr/bin/env python3
"""Writes a sparse raw disk image whose content compresses like a real disk: about half of
the 1 MiB chunks hold data (64 KiB blocks of text-like, random and zero bytes mixed),
the rest are holes. Deterministic (fixed seed), so cached images are comparable.

usage: gen-disk.py PATH SIZE_BYTES
"""
import os
import random
import sys

CHUNK = 1 << 20
BLOCK = 64 << 10


def text_pool(rng, size):
    """Log-file-like text: lines of words from a fixed vocabulary, with numbers."""
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(4000)]
    lines = []
    total = 0
    while total < size:
        words = rng.choices(vocab, k=rng.randint(4, 14))
        line = "%08d %s %d\n" % (total, " ".join(words), rng.randint(0, 99999))
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def main():
    path, size = sys.argv[1], int(sys.argv[2])
    rng = random.Random(20261126)
    pool = text_pool(rng, 8 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for chunk in range(size // CHUNK):
            # ~59% data chunks x ~85% non-zero blocks: about half the disk holds data
            if rng.random() >= 0.59:
                continue
            blocks = []
            for _ in range(CHUNK // BLOCK):
                kind = rng.random()
                if kind < 0.60:
                    start = rng.randrange(0, len(pool) - BLOCK)
                    blocks.append(pool[start:start + BLOCK])
                elif kind < 0.85:
                    blocks.append(rng.randbytes(BLOCK))
                else:
                    blocks.append(bytes(BLOCK))
            os.pwrite(fd, b"".join(blocks), chunk * CHUNK)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
