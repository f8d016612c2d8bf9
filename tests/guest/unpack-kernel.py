#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""unpack-kernel.py BZIMAGE OUT: write the kernel's ELF image (vmlinux) to OUT.

Under TCG a guest spends seconds in firmware and in the kernel's own
decompressor before its first console line.  QEMU can start an ELF kernel
that carries a PVH entry note directly (-kernel vmlinux), which skips both.
The payload's place is in the bzImage's setup header (boot protocol >= 2.08:
payload_offset at 0x248, payload_length at 0x24c, counted from the start of
the protected-mode code, (setup_sects + 1) * 512).  Exits 1, writing
nothing, when the image is not such a kernel or has no PVH entry.
"""
import lzma
import os
import struct
import subprocess
import sys
import zlib

XEN_ELFNOTE_PHYS32_ENTRY = 18


def payload(img):
    if len(img) < 0x250 or img[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage (no HdrS setup header)")
    version = struct.unpack_from("<H", img, 0x206)[0]
    if version < 0x208:
        raise ValueError("boot protocol %#x has no payload fields" % version)
    setup_sects = img[0x1F1] or 4
    offset, length = struct.unpack_from("<II", img, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return img[start:start + length]


def decompress(data):
    # The payload ends with the image's size (4 bytes) after the stream.
    if data.startswith(b"\xfd7zXZ\x00"):
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out = d.decompress(data)
        if not d.eof:
            raise ValueError("xz payload truncated")
        return out
    if data.startswith(b"\x1f\x8b"):
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(data)
        if not d.eof:
            raise ValueError("gzip payload truncated")
        return out
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return subprocess.run(["zstd", "-qdc"], input=data, stdout=subprocess.PIPE, check=True).stdout
    raise ValueError("payload compressed with a format this script does not read")


def has_pvh_note(elf):
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError("payload is not a 64-bit ELF image")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p = phoff + i * phentsize
        ptype, = struct.unpack_from("<I", elf, p)
        if ptype != 4:  # PT_NOTE
            continue
        off, = struct.unpack_from("<Q", elf, p + 8)
        size, = struct.unpack_from("<Q", elf, p + 32)
        q, end = off, off + size
        while q + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, q)
            name = elf[q + 12:q + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            q += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: unpack-kernel.py BZIMAGE OUT")
    with open(sys.argv[1], "rb") as f:
        img = f.read()
    try:
        elf = decompress(payload(img))
        if not has_pvh_note(elf):
            raise ValueError("the kernel has no PVH entry (CONFIG_PVH)")
    except (ValueError, lzma.LZMAError, zlib.error, OSError, EOFError, subprocess.CalledProcessError) as err:
        print("unpack-kernel: %s: %s" % (sys.argv[1], err), file=sys.stderr)
        sys.exit(1)
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.rename(tmp, sys.argv[2])


if __name__ == "__main__":
    main()
