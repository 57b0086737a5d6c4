"""Decompression bombs for the archive tests: small on disk, hundreds of MiB inflated.

Zeros compress about 250:1 with deflate level 1 (fast to write) and about 700,000:1 with
bzip2; concatenated bzip2 streams read as one, so a bzip2 tar is assembled from one
compressed block of zeros repeated.
"""

from __future__ import annotations

import bz2
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

MIB = 1 << 20
_ZEROS = bytes(MIB)
_BZ2_STEP = 32 * MIB
_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(done.stdout)\n"
    "sys.stderr.write(done.stderr)\n"
    "sys.stderr.write(f'\\npeak_rss_kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')\n"
    "sys.exit(done.returncode)\n"
)


def zeros_zip(path: Path, zeros: dict[str, int], files: dict[str, bytes] | None = None) -> Path:
    """A deflated zip of members of ``zeros[name]`` zero bytes, plus ``files`` as given."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in (files or {}).items():
            archive.writestr(name, data)
        for name, size in zeros.items():
            with archive.open(name, "w") as member:
                for _ in range(size // MIB):
                    member.write(_ZEROS)
    return path


def forge_sizes(path: Path, declared: dict[str, int]) -> None:
    """Overwrite the uncompressed size of members in both their local and central headers."""
    _patch_headers(path, declared, central_at=24, local_at=22)


def set_flag_bits(path: Path, flags: dict[str, int]) -> None:
    """Overwrite the general-purpose flags of members (``zipfile`` writes its own)."""
    _patch_headers(path, flags, central_at=8, local_at=6, size="<H")


def _patch_headers(
    path: Path, values: dict[str, int], *, central_at: int, local_at: int, size: str = "<I"
) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = data[pos + 46 : pos + 46 + name_len].decode()
        if name in values:
            struct.pack_into(size, data, pos + central_at, values[name])
            struct.pack_into(size, data, infos[name].header_offset + local_at, values[name])
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def bz2_tar(path: Path, zeros: tuple[str, int], files: dict[str, bytes]) -> Path:
    """A .tar.bz2: a member of ``zeros[1]`` zero bytes (a multiple of 32 MiB), then ``files``."""
    name, size = zeros
    header = tarfile.TarInfo(name)
    header.size = size
    block = bz2.compress(bytes(_BZ2_STEP))
    parts = [bz2.compress(header.tobuf(format=tarfile.PAX_FORMAT))]
    parts += [block] * (size // _BZ2_STEP)
    tail = b""
    for member, data in files.items():
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tail += info.tobuf(format=tarfile.PAX_FORMAT) + data + bytes(-len(data) % 512)
    parts.append(bz2.compress(tail + bytes(1024)))
    path.write_bytes(b"".join(parts))
    return path


def run_measured(args: list[str], env: dict[str, str] | None = None) -> tuple[str, int]:
    """Run a command that must succeed: its stdout, and its peak RSS in KiB (the largest of
    the command and its descendants)."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
    stderr, _, peak = done.stderr.rpartition("\npeak_rss_kib=")
    assert done.returncode == 0, stderr[-3000:]
    return done.stdout, int(peak)
