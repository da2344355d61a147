"""The key bundle's plaintext: a POSIX tar of per-device key (and certificate) files with an index.csv.

Layout (flat, so `tar -x` and `python -m include.key_bundle open` write the same tree), in this order:

    <stem>.key.pem           the device's unencrypted PKCS#8 private key, mode 0600
    <stem>.cert.pem          its certificate, when it existed at sealing time
    index.csv                thing_name, serial_number, model, row, certificate_id, key_file,
                             certificate_file (one line per device; certificate columns empty when the
                             certificate did not exist yet at sealing time)
    bundle.json              {"format": "factory-key-bundle", "version": 2, "batch_id", "chunk", "count",
                              "created_at"}

index.csv and bundle.json come last because they count what was sealed, and the device files are encrypted
as the workers hand them over, before the chunk's last device exists.

<stem> is `file_stem(thing_name)`: the thing name itself when it is made of [A-Za-z0-9_-] and does not
start with "-" (else a safe name plus a digest), so a certificates archive written later
(`certificates_archive`) pairs with the keys by file name alone.

The worker processes build each device's index line and tar members (`device_entry`) and hand them over
joined per slice (`Entries`: the index lines in one bytes object, the members in another), so the parent
only appends index.csv and bundle.json (`closing`), with no per-device work.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from include.csv_safety import FORMULA_TRIGGERS, NEUTRALISER, neutralise, write_csv
from include.errors import KeyBundleError

META_FILE = "bundle.json"
INDEX_FILE = "index.csv"
CERTIFICATES_INDEX_FILE = "certificates.csv"
KEY_SUFFIX = ".key.pem"
CERTIFICATE_SUFFIX = ".cert.pem"
INDEX_COLUMNS = (
    "thing_name",
    "serial_number",
    "model",
    "row",
    "certificate_id",
    "key_file",
    "certificate_file",
)
CERTIFICATES_COLUMNS = ("thing_name", "certificate_id", "certificate_file")
FORMAT, VERSION = "factory-key-bundle", 2

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
KEY_MODE, FILE_MODE = b"0000600\x00", b"0000644\x00"
# Portable file name characters, and no leading "-" (an option to shell tools, a formula to spreadsheets).
_PORTABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_SAFE_MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def file_stem(thing_name: str) -> str:
    """The device's file name stem: its thing name, or a safe unique one for a name with other characters."""
    if _PORTABLE.fullmatch(thing_name):
        return thing_name
    # ':' is legal in a thing name but not on every file system; the digest keeps "a:b" and "a_b" apart.
    digest = hashlib.sha256(thing_name.encode("utf-8")).hexdigest()[:8]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in thing_name)
    return f"{cleaned.lstrip('-') or 'device'}-{digest}"


# A ustar header: name, mode, uid + gid, size, mtime, checksum, type, then linkname (empty), magic "ustar",
# version "00" and empty owner, device and prefix fields.
_UID_GID = b"0000000\x00" * 2
_TAIL = bytes(100) + b"ustar\x0000" + bytes(BLOCK - 265)
_ZEROS = bytes(BLOCK)


@functools.lru_cache(maxsize=4096)
def _fixed_fields(mode: bytes, size: int, mtime_field: bytes, kind: bytes) -> tuple[bytes, bytes, int]:
    """A header's fields between name and checksum, those after it, and the checksum of all but the name.

    The checksum is the sum of the header's bytes with its own field as spaces; only the name varies per
    device (sizes and the second repeat), so summing all 512 bytes each time would cost 3 µs per member.
    """
    middle = mode + _UID_GID + b"%011o\x00" % size + mtime_field
    after = kind + _TAIL
    return middle, after, sum(middle) + sum(b" " * 8) + sum(after)


def _header(name: bytes, mode: bytes, size: int, mtime_field: bytes, kind: bytes) -> bytes:
    middle, after, fixed_sum = _fixed_fields(mode, size, mtime_field, kind)
    return name.ljust(100, b"\x00") + middle + b"%06o\x00 " % (fixed_sum + sum(name)) + after


def _mtime(mtime: int) -> bytes:
    return b"%011o\x00" % mtime


def _pax_path(name: bytes, mtime: bytes) -> list[bytes]:
    """A pax extended header carrying a path longer than ustar's 100 bytes (long thing names)."""
    body = b" path=" + name + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    record = str(length).encode("ascii") + body
    header = _header(b"PaxHeader/" + name[:80], FILE_MODE, len(record), mtime, b"x")
    return [header, record, _ZEROS[: -len(record) % BLOCK]]


def _member(parts: list[bytes], name: str, data: bytes, mode: bytes, mtime: bytes) -> None:
    """Append one regular file's header (a pax header first when the name is long), data and padding."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        parts += _pax_path(encoded, mtime)
    parts += (_header(encoded[:100], mode, len(data), mtime, b"0"), data, _ZEROS[: -len(data) % BLOCK])


def member(name: str, data: bytes, mode: bytes, mtime: int) -> bytes:
    """One regular file of the archive, as tar bytes."""
    parts: list[bytes] = []
    _member(parts, name, data, mode, _mtime(mtime))
    return b"".join(parts)


_NEEDS_QUOTES = re.compile(r'[",\r\n]')


def _csv_line(thing_name: str, serial_number: str | None, model: str, rest: str) -> bytes:
    """One index line as csv_safety.write_csv writes it (neutralised cells, minimal quoting, CRLF).

    `rest` (row, certificate id, file names) is digits, hex and file stems: never a formula, never quoted.
    """
    cells = (neutralise(thing_name), neutralise(serial_number), neutralise(model))
    if _NEEDS_QUOTES.search("".join(cells)):  # rare (a serial with a comma, say): csv quotes as it does
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator="\r\n").writerow([*cells, *rest.split(",")])
        return buffer.getvalue().encode("utf-8")
    return f"{cells[0]},{cells[1]},{cells[2]},{rest}\r\n".encode()


def device_entry(
    thing_name: str,
    serial_number: str | None,
    model: str,
    row: int,
    certificate_id: str | None,
    certificate_pem: str | None,
    key_pem: bytes,
) -> tuple[bytes, bytes]:
    """One device's index line and archive members (built in the worker; private key inside)."""
    stem = file_stem(thing_name)
    mtime = _mtime(int(time.time()))
    key_file, certificate_file = stem + KEY_SUFFIX, ""
    parts: list[bytes] = []
    _member(parts, key_file, key_pem, KEY_MODE, mtime)
    if certificate_pem:
        certificate_file = stem + CERTIFICATE_SUFFIX
        _member(parts, certificate_file, certificate_pem.encode("ascii"), FILE_MODE, mtime)
    line = _csv_line(
        thing_name, serial_number, model, f"{row},{certificate_id or ''},{key_file},{certificate_file}"
    )
    return line, b"".join(parts)


@dataclass(frozen=True)
class Entries:
    """Device entries of a bundle in device order: their index lines joined, their tar members joined.

    Private keys inside: only ever for `archive` and include.key_bundle (BundleWriter, seal_payload); never
    shown.
    """

    index: bytes = b""
    members: bytes = b""
    count: int = 0

    @classmethod
    def of(cls, entries: Sequence[tuple[bytes, bytes]]) -> Entries:
        """From `device_entry` results."""
        return cls(b"".join(e[0] for e in entries), b"".join(e[1] for e in entries), len(entries))

    @classmethod
    def join(cls, parts: Sequence[Entries]) -> Entries:
        return cls(
            b"".join(p.index for p in parts), b"".join(p.members for p in parts), sum(p.count for p in parts)
        )

    def __repr__(self) -> str:  # never show the plaintext
        return f"Entries(count={self.count})"


def closing(index: bytes, count: int, meta: dict[str, Any]) -> bytes:
    """What follows the device members: index.csv (its lines joined), bundle.json, the end of the archive."""
    mtime = int(time.time())
    document = {"format": FORMAT, "version": VERSION, **meta, "count": count}
    return b"".join(
        [
            member(INDEX_FILE, write_csv(INDEX_COLUMNS, []) + index, FILE_MODE, mtime),
            member(META_FILE, json.dumps(document, indent=2).encode() + b"\n", FILE_MODE, mtime),
            END_OF_ARCHIVE,
        ]
    )


def archive(entries: Entries, meta: dict[str, Any]) -> bytes:
    """The tar of the device entries, closed by index.csv and bundle.json."""
    return entries.members + closing(entries.index, entries.count, meta)


def certificates_archive(certificates: Iterable[tuple[str, str, str]]) -> bytes:
    """A plain tar of (thing_name, certificate_id, certificate PEM): <stem>.cert.pem and certificates.csv.

    For certificates that did not exist when the key bundle was sealed (AWS signs the CSR at registration):
    extracted into the directory the bundle was opened into, each certificate lands beside its key.
    """
    mtime = int(time.time())
    files: list[bytes] = []
    rows: list[tuple[str, str, str]] = []
    for thing_name, certificate_id, certificate_pem in certificates:
        name = file_stem(thing_name) + CERTIFICATE_SUFFIX
        files.append(member(name, certificate_pem.encode("ascii"), FILE_MODE, mtime))
        rows.append((thing_name, certificate_id, name))
    index = member(CERTIFICATES_INDEX_FILE, write_csv(CERTIFICATES_COLUMNS, rows), FILE_MODE, mtime)
    return b"".join([index, *files, END_OF_ARCHIVE])


def read_archive(data: bytes) -> dict[str, bytes]:
    """The regular files of a bundle's tar by name; anything else (links, paths, repeats) is refused."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile() or not _SAFE_MEMBER.fullmatch(info.name) or info.name in files:
                    raise KeyBundleError(f"the bundle holds an unexpected member {info.name[:80]!r}")
                handle = tar.extractfile(info)
                files[info.name] = handle.read() if handle else b""
    except tarfile.TarError:
        raise KeyBundleError("the bundle's archive is damaged (not a tar)") from None
    if META_FILE not in files or INDEX_FILE not in files:
        raise KeyBundleError(f"the bundle's archive lacks {META_FILE} or {INDEX_FILE}")
    return files


def _restored(text: str) -> str | None:
    """A cell as written before csv_safety.neutralise; None for an empty optional cell."""
    if text.startswith(NEUTRALISER) and text[1:2] in FORMULA_TRIGGERS:
        return text[1:]
    return text or None


def meta(files: dict[str, bytes]) -> dict[str, Any]:
    """The archive's bundle.json."""
    try:
        document = json.loads(files[META_FILE])
    except ValueError:
        raise KeyBundleError(f"the bundle's {META_FILE} is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyBundleError(f"the bundle's {META_FILE} does not describe a {FORMAT}")
    return document


def _record(files: dict[str, bytes], cells: list[str]) -> dict[str, Any]:
    thing, serial, model, row, certificate_id, key_file, certificate_file = map(_restored, cells)
    if key_file not in files or (certificate_file and certificate_file not in files):
        raise KeyBundleError(f"the bundle's {INDEX_FILE} names files it does not hold ({thing})")
    return {
        "thing_name": thing,
        "serial_number": serial,
        "model": model,
        "row": int(row or 0),
        "certificate_id": certificate_id,
        "certificate_pem": files[certificate_file].decode("ascii") if certificate_file else None,
        "private_key_pem": files[key_file].decode("ascii"),
    }


def records(files: dict[str, bytes]) -> Iterator[dict[str, Any]]:
    """The devices of an opened archive: index fields, certificate PEM (or None) and private key PEM."""
    expected = meta(files).get("count")
    count = 0
    try:
        reader = csv.reader(io.StringIO(files[INDEX_FILE].decode("utf-8"), newline=""))
        if tuple(next(reader, ())) != INDEX_COLUMNS:
            raise KeyBundleError(f"the bundle's {INDEX_FILE} does not start with {','.join(INDEX_COLUMNS)}")
        for cells in reader:
            yield _record(files, cells)
            count += 1
    except (ValueError, csv.Error):  # UnicodeDecodeError included: garbled text, as an altered bundle has
        raise KeyBundleError(
            f"the bundle is damaged or was altered ({INDEX_FILE} or a file unreadable)"
        ) from None
    if count != expected:
        raise KeyBundleError(f"the bundle holds {count} devices, its {META_FILE} says {expected}")
