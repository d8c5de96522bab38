"""Structural checks of an ELF relocatable object before MCJIT sees it.

MCJIT trusts its input: a truncated object, or one for another machine whose
header was relabelled, can crash the loading process (the job child dies, which
the server would report as RUNTIME_ERROR) instead of failing cleanly. Checking
the ELF header and every section's extent against the bytes we hold turns those
into LOAD_ERROR before anything is loaded.
"""
from __future__ import annotations

import struct

from farm.errors import LoadError

# e_machine per architecture (as farm.target._arch_of names them), and the ELF class it needs.
MACHINES = {"x86_64": (62, 2), "aarch64": (183, 2), "arm": (40, 1), "i386": (3, 1), "i686": (3, 1)}
ET_REL = 1
SHT_NOBITS = 8


def check_object(code: bytes, arch: str) -> None:
    """Raise LoadError unless ``code`` is a whole little-endian ELF relocatable object for ``arch``."""
    if len(code) < 52 or not code.startswith(b"\x7fELF"):
        raise LoadError("artifact code is not an ELF object")
    ei_class, ei_data, ei_version = code[4], code[5], code[6]
    if ei_data != 1 or ei_version != 1 or ei_class not in (1, 2):
        raise LoadError(f"unsupported ELF identification (class {ei_class}, data {ei_data}, version {ei_version})")
    want = MACHINES.get(arch)
    wide = ei_class == 2
    if wide and len(code) < 64:
        raise LoadError(f"ELF header truncated: {len(code)} bytes")
    e_type, e_machine = struct.unpack_from("<HH", code, 16)
    if e_type != ET_REL:
        raise LoadError(f"ELF type {e_type} is not a relocatable object")
    if want is not None and (e_machine, ei_class) != want:
        raise LoadError(f"ELF object is for machine {e_machine} (class {ei_class}), this device is {arch}")
    if wide:
        e_shoff, = struct.unpack_from("<Q", code, 40)
        e_ehsize, _, _, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHHH", code, 52)
        hdr_size, sh_size, sh_fmt = 64, 64, "<IIQQQQIIQQ"
    else:
        e_shoff, = struct.unpack_from("<I", code, 32)
        e_ehsize, _, _, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHHH", code, 40)
        hdr_size, sh_size, sh_fmt = 52, 40, "<IIIIIIIIII"
    if e_ehsize != hdr_size or e_shentsize != sh_size or e_shnum == 0 or e_shstrndx >= e_shnum:
        raise LoadError("malformed ELF header (sizes or section count)")
    if e_shoff + e_shnum * e_shentsize > len(code):
        raise LoadError(f"ELF object truncated: section table ends past its {len(code)} bytes")
    for i in range(e_shnum):
        f = struct.unpack_from(sh_fmt, code, e_shoff + i * e_shentsize)
        sh_type, sh_offset, sh_sz = f[1], f[4], f[5]
        if sh_type != SHT_NOBITS and sh_offset + sh_sz > len(code):
            raise LoadError(f"ELF object truncated: section {i} ends at {sh_offset + sh_sz}, code is {len(code)} bytes")
