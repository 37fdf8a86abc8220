"""Limits on NIfTI images received over HTTP, checked before their data is read (issue 36).

A NIfTI header is a few hundred bytes that says how many voxels follow; a ``.nii.gz`` of a few MB
can inflate to GBs. So the header is read first (nibabel, from the first decompressed bytes) and
the image refused when it claims more voxels or bytes than allowed, or, for an edited mask, a
grid other than the structure's; then the data is decompressed in bounded pieces, counting, and
refused as soon as it goes past what the header declared (or the configured cap).

:func:`check_nifti_file` is the study upload's check (``DELINEO_MAX_VOXELS``,
``DELINEO_MAX_NIFTI_MB``); :class:`MaskStream` and :func:`receive_mask` take an edited mask's
body as it arrives. Both raise :class:`NiftiRefused` (``status`` 413 for too large, 422 for not
fitting or not readable) with a message for a person; the caller puts the file name in front.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path
from typing import AsyncIterator

from delineo.service.streams import idle_bounded

#: the longest NIfTI header (NIfTI-2); NIfTI-1's is 348 bytes
HEADER_MAX = 540
#: decompressed bytes an upload may need before its header is complete (header + extensions)
PRE_HEADER_LIMIT = 1 << 20
#: what a file may hold beyond the data its header declares (padding) before it is refused
SLACK = 1 << 20
CHUNK = 1 << 20


class NiftiRefused(ValueError):
    """A NIfTI refused before (or while) its data is read; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


def parse_header(first: bytes):
    """The nibabel header (NIfTI-1 or NIfTI-2, single file) at the start of ``first``, the first
    decompressed bytes of an upload; :class:`NiftiRefused` when they are not one."""
    import nibabel as nib

    if len(first) < 4:
        raise NiftiRefused("not a NIfTI image (shorter than a NIfTI header)")
    sizes = {int.from_bytes(first[:4], "little"), int.from_bytes(first[:4], "big")}
    klass = nib.Nifti1Header if 348 in sizes else nib.Nifti2Header if 540 in sizes else None
    if klass is None:
        raise NiftiRefused("not a NIfTI image (no NIfTI-1 or NIfTI-2 header at its start)")
    size = 348 if klass is nib.Nifti1Header else 540
    if len(first) < size:
        raise NiftiRefused(f"not a NIfTI image (cut short: {len(first)} bytes, a NIfTI header has {size})")
    try:
        header = klass.from_fileobj(io.BytesIO(bytes(first[:size])), check=False)
        magic = bytes(header["magic"]).rstrip(b"\0")
        if magic not in (b"n+1", b"n+2"):
            raise NiftiRefused(f"not a single-file NIfTI image (magic {magic!r}; upload .nii or .nii.gz, not a .hdr/.img pair)")
        header.get_data_shape()
        header.get_data_dtype()
    except NiftiRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel's HeaderDataError and friends
        raise NiftiRefused(f"not a readable NIfTI header ({exc.__class__.__name__}: {exc})") from None
    return header


def declared(header) -> tuple[tuple[int, ...], int, int]:
    """``(shape, voxels, bytes up to the end of the data)`` as the header declares them."""
    shape = tuple(int(s) for s in header.get_data_shape())
    voxels = math.prod(shape) if shape else 0
    offset = max(int(header["vox_offset"]), int(header["sizeof_hdr"]) + 4)
    return shape, voxels, offset + voxels * header.get_data_dtype().itemsize


def check_nifti_file(path: Path, *, max_voxels: int, max_bytes: int) -> tuple[int, ...]:
    """Refuse a stored NIfTI (``.nii`` or ``.nii.gz``) whose header claims more than
    ``max_voxels`` voxels or ``max_bytes`` of data, before its data is read; then decompress it
    in 1 MB pieces, counting, and refuse it as soon as it holds more than that (or much more than
    its header declares). Returns the declared shape."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            first = f.read(HEADER_MAX)
            header = parse_header(first)
            shape, voxels, size = declared(header)
            if voxels > max_voxels:
                raise NiftiRefused(f"the image has {' x '.join(map(str, shape))} = {voxels:,} voxels, more than the "
                                   f"{max_voxels:,} allowed (DELINEO_MAX_VOXELS)", 413)
            if size > max_bytes:
                raise NiftiRefused(f"the image's data is {_mb(size)} uncompressed, more than the {_mb(max_bytes)} "
                                   "allowed (DELINEO_MAX_NIFTI_MB)", 413)
            limit = min(max_bytes, size + SLACK)
            total = len(first)
            while chunk := f.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    what = (f"more than the {_mb(max_bytes)} allowed (DELINEO_MAX_NIFTI_MB)" if limit == max_bytes
                            else f"more than the {_mb(size)} its header declares")
                    raise NiftiRefused(f"refused as a decompression bomb: it expands to {what}", 413)
    except NiftiRefused:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiRefused(f"not a readable {'gzip-compressed ' if compressed else ''}NIfTI image ({exc.__class__.__name__}: {exc})") from None
    return shape


class MaskStream:
    """An edited mask's body, fed as it arrives (gzip-compressed or not): the header is checked
    against ``grid`` (the structure's shape) as soon as its bytes are in, and the decompressed
    data is bounded by what a mask on that grid needs; :meth:`finish` gives the decompressed
    NIfTI. At no point is more than that held. Raises :class:`NiftiRefused`."""

    def __init__(self, grid: tuple[int, ...], max_compressed: int):
        self.grid = tuple(int(s) for s in grid)
        self.max_compressed = max_compressed
        self.received = 0
        self.buf = bytearray()
        self.gzip: bool | None = None
        self.z = None
        self.header = None
        self.size = 0  # bytes up to the end of the data, once the header is known

    def _limit(self) -> int:
        return PRE_HEADER_LIMIT if self.header is None else self.size + SLACK

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.received += len(chunk)
        cap = self.max_compressed if self.header is None else min(self.max_compressed, self.size + SLACK)
        if self.received > cap:
            raise NiftiRefused(f"the upload is larger than the {_mb(cap)} a mask on the structure's grid "
                               f"{self.grid} can take", 413)
        if self.gzip is None:
            self.gzip = chunk[:2] == b"\x1f\x8b"  # a 1-byte first chunk is read as not compressed; NIfTI starts with 4 bytes
        if not self.gzip:
            self._add(chunk)
            return
        data = chunk
        while data:
            if self.z is None:
                self.z = zlib.decompressobj(31)  # one gzip member (a .nii.gz may hold several)
            try:
                out = self.z.decompress(data, self._limit() - len(self.buf) + 1)
            except zlib.error as exc:
                raise NiftiRefused(f"not a readable gzip-compressed NIfTI image ({exc})") from None
            self._add(out)
            if self.z.eof:
                data = self.z.unused_data
                self.z = None
            else:
                data = self.z.unconsumed_tail

    def _add(self, data: bytes) -> None:
        self.buf += data
        if self.header is None and len(self.buf) >= 4:
            sizes = {int.from_bytes(self.buf[:4], "little"), int.from_bytes(self.buf[:4], "big")}
            need = 348 if 348 in sizes else HEADER_MAX
            if len(self.buf) >= need or 348 not in sizes and 540 not in sizes:
                self.header = parse_header(self.buf)
                shape, _, self.size = declared(self.header)
                fitted = shape
                while len(fitted) > len(self.grid) and fitted[-1] == 1:
                    fitted = fitted[:-1]
                if fitted != self.grid:
                    raise NiftiRefused(f"the mask is {shape} voxels, the structure's grid is {self.grid}", 422)
        if len(self.buf) > self._limit():
            if self.header is None:
                raise NiftiRefused(f"not a NIfTI image (no header in its first {_mb(PRE_HEADER_LIMIT)})", 422)
            raise NiftiRefused(f"refused as a decompression bomb: it expands to more than the {_mb(self.size)} "
                               f"its header declares for the grid {self.grid}", 413)

    def finish(self) -> bytes:
        if self.header is None:
            raise NiftiRefused(f"not a NIfTI image ({len(self.buf)} bytes, shorter than a NIfTI header)")
        if self.z is not None:
            raise NiftiRefused("the gzip stream is cut short")
        if len(self.buf) < self.size:
            raise NiftiRefused(f"the mask's data is cut short: {len(self.buf)} of the {self.size} bytes its header declares")
        return bytes(self.buf)


async def receive_mask(stream: AsyncIterator[bytes], grid: tuple[int, ...], *, max_compressed: int, idle_s: float) -> bytes:
    """Read an edited mask's body from ``stream`` (``request.stream()``) through a
    :class:`MaskStream`; nothing received for ``idle_s`` -> 408."""
    mask = MaskStream(grid, max_compressed)
    async for chunk in idle_bounded(stream, idle_s, NiftiRefused):
        mask.feed(chunk)
    return mask.finish()
