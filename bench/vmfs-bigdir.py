#!/usr/bin/env python3
"""Makes a VMFS5 image with one directory of N entries, for timing `vdr ls` / `vdr extract`.

    usage: bench/vmfs-bigdir.py VDR VMFS5_IMAGE OUT N

Starts from the corpus image vmfs5.bin (../shared/corpus/vmfs, expanded): copies it to OUT
and rewrites /directory as an N-entry directory stored in two free 1 MiB file blocks near
the end of the volume (LV blocks 250..): its FD becomes an FB-addressed file of N + 6
entries (the original 6 first), the new entries named f000000.. and pointing at the five
existing files' FDs in turn. No FD is added: the listing reads N FDs, as a real
directory of N files would. VDR (a vdr binary) supplies the FD offsets (`ls --json`).
"""
import json
import os
import struct
import subprocess
import sys

LV = 0x110_0000  # the LV's offset in the corpus images
ENTRY = 0x8C  # VMFS5 directory entry: type, FD address, generation, name[128]
BLOCK = 1 << 20
FIRST_BLOCK = 250


def main():
    vdr, image, out, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    listing = json.loads(
        subprocess.check_output([vdr, "ls", image, "/", "-R", "--json"])
    )
    by_path = {e["path"]: e for e in listing}
    directory = by_path["/directory"]
    files = [by_path[f"/directory/file{i}"]["fd_address"] for i in range(1, 6)]
    subprocess.check_call(["cp", "--sparse=always", image, out])
    os.chmod(out, 0o644)  # the corpus copy may be read-only
    with open(out, "r+b") as f:
        dir_fd = LV + directory["fd_offset"]
        entries = bytearray(original_entries(vdr, image))
        for i in range(count):
            name = f"f{i:06d}".encode()
            entries += struct.pack("<III", 3, files[i % 5], 1) + name.ljust(128, b"\0")
        blocks = (len(entries) + BLOCK - 1) // BLOCK
        for b in range(blocks):
            f.seek(LV + (FIRST_BLOCK + b) * BLOCK)
            f.write(entries[b * BLOCK : (b + 1) * BLOCK])
        meta = dir_fd + 0x200
        f.seek(meta + 0x14)
        f.write(struct.pack("<QQ", len(entries), BLOCK))  # length, block size
        f.seek(meta + 0x24)
        f.write(struct.pack("<Q", blocks))  # number of blocks
        f.seek(meta + 0x44)
        f.write(struct.pack("<I", 1))  # ZLA: file blocks
        f.seek(meta + 0x89)
        f.write(bytes([20]))  # block shift: 1 MiB
        f.seek(dir_fd + 0x400)
        f.write(b"".join(struct.pack("<I", ((FIRST_BLOCK + b) << 6) | 1) for b in range(blocks)))
        f.write(bytes(4 * (256 - blocks)))


def original_entries(vdr, image):
    """The directory's 6 entries as they are on disk (without . and ..): rebuilt from
    `ls --json`, since the names and FD addresses are all an entry holds."""
    listing = json.loads(subprocess.check_output([vdr, "ls", image, "/directory", "--json"]))
    types = {"file": 3, "symlink": 4, "dir": 2}
    return b"".join(
        struct.pack("<III", types[e["type"]], e["fd_address"], 1)
        + e["name"].encode().ljust(128, b"\0")
        for e in listing
    )


if __name__ == "__main__":
    main()
