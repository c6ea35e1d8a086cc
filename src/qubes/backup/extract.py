"""Decode one item (decrypt, decompress) and extract its inner tar with our filter.

The inner tar is parsed by our `tarreader` in a worker thread fed through a
bounded pipe; members are checked before anything is written: expected
names only, regular files and directories only, no `..`, no absolute
names, no duplicates (CASES.md B41). Files are created with O_EXCL and
O_NOFOLLOW inside the destination, holes are kept as holes. Every byte is
claimed from the restore's `SpaceGuard` before it is written, so a restore
stops a VM instead of filling the filesystem (B13); no image grows past the
size the archive records for it (B23).
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading

from qubes.backup import compress, crypto
from qubes.backup.format import MAX_DEPTH, MAX_HOME_ENTRIES, MAX_NAME_BYTES
from qubes.backup.errors import BackupError, UnsafeArchiveError
from qubes.backup.space import BLOCK, SpaceGuard
from qubes.backup.tarreader import TarFormatError, TarReader, TarSizeError
from qubes.util.atomicfile import describe_os_error
from qubes.util.text import printable

_PART = re.compile(r"[^\x00-\x1f\x7f/]+")
ZERO_BLOCK = 4096
MAX_ENTRIES = 10_000            # a VM directory item; dom0 home gets more
MAX_FILE_SIZE = 1 << 44         # 16 TiB, the ext4 limit: verify refuses what restore could not
MAX_PATH = 4000
_SET_SLOT = 32                  # what a kept name costs beyond its string, about
_ZEROS = bytes(ZERO_BLOCK)
_EOF = object()


class _Abort(Exception):
    pass


class _Pipe:
    """A bounded byte pipe from the reading thread to the tar worker."""

    def __init__(self, depth: int = 8):
        self._q: queue.Queue = queue.Queue(depth)
        self._buf = b""
        self._pos = 0
        self._done = False

    def put(self, data, alive) -> bool:
        while True:
            try:
                self._q.put(data, timeout=0.1)
                return True
            except queue.Full:
                if not alive():
                    return False

    def read(self, n: int = -1) -> bytes:
        while self._pos >= len(self._buf) and not self._done:
            item = self._q.get()
            if item is _EOF:
                self._done = True
            elif isinstance(item, _Abort):
                raise item
            else:
                self._buf, self._pos = item, 0
        start = self._pos
        end = len(self._buf) if n < 0 else min(len(self._buf), start + n)
        self._pos = end
        if start == 0 and end == len(self._buf):
            return self._buf  # the common case: no copy
        return self._buf[start:end]


def relative_path(untrusted_name: str, subdir: str, item_name: str) -> str | None:
    """Path inside the VM directory for an inner member; None for the item's own dir."""
    name = untrusted_name.rstrip("/")
    if name != item_name.rstrip("/") and not name.startswith(item_name.rstrip("/") + "/"):
        raise UnsafeArchiveError(f"item '{item_name}': unexpected member "
                                 f"'{printable(untrusted_name)}'", untrusted_name)
    rest = name[len(subdir):]
    if len(rest.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise UnsafeArchiveError(f"item '{item_name}': member name longer than {MAX_PATH} bytes",
                                 untrusted_name)
    parts = [p for p in rest.split("/") if p != "."] if rest else []
    if len(parts) > MAX_DEPTH:
        # removing or copying such a tree later costs a stack frame per level in
        # many tools (shutil.rmtree in Python 3.11 fails at ~1000); no VM needs it
        raise UnsafeArchiveError(f"item '{item_name}': member '{printable(untrusted_name, 120)}' is "
                                 f"{len(parts)} path components deep (at most {MAX_DEPTH})",
                                 untrusted_name)
    for part in parts:
        if part == ".." or not _PART.fullmatch(part) \
                or len(part.encode("utf-8", "surrogateescape")) > 255:
            shown = untrusted_name.encode("unicode_escape").decode("ascii")
            raise UnsafeArchiveError(f"item '{item_name}': unsafe member name '{shown}'",
                                     untrusted_name)
    return "/".join(parts) or None


class InnerExtractor:
    """Parses one item's inner tar in a thread; writes into `dest` (None: verify only)."""

    def __init__(self, item_name: str, subdir: str, dest: str | None,
                 capture: dict | None = None, capture_limit: int = 0, links: bool = False,
                 single: bool = False, max_entries: int = MAX_ENTRIES,
                 space: SpaceGuard | None = None):
        self.item_name = item_name
        self.space = space          # None: nothing is claimed (verify only, captures)
        self.single = single        # the item is one file named like the item, nothing else
        self.max_entries = min(max_entries, MAX_HOME_ENTRIES)
        self.max_name_bytes = MAX_NAME_BYTES
        self._name_bytes = 0        # memory of the names kept in `seen` and `_clear`
        self.subdir = subdir
        self.dest = dest
        self.links = links          # dom0 home: symlinks and hard links allowed, inside it
        self._symlinks: set[str] = set()
        self._dirs: set[str] = set()
        self._regular: set[str] = set()
        self._clear: set[str] = set()  # parent directories checked: no link or file there
        self._dir_times: list[tuple[str, int, int]] = []
        self.capture = capture
        self.capture_limit = capture_limit
        self.error: BaseException | None = None
        self.files: list[str] = []
        self._pipe = _Pipe()
        self._thread = threading.Thread(target=self._run, name=f"extract {item_name}",
                                        daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        if data and not self._pipe.put(data, self._thread.is_alive):
            self._thread.join()

    def finish(self) -> None:
        self._pipe.put(_EOF, self._thread.is_alive)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self._pipe.put(_Abort(), self._thread.is_alive)
        self._thread.join()

    def _run(self) -> None:
        try:
            reader = TarReader(self._pipe.read)
            seen: set = set()
            while (member := reader.next()) is not None:
                self._member(reader, member, seen)
            self._finish_dirs()
            while self._pipe.read(1 << 16):  # drain the padding so the writer never blocks
                pass
            if not self.files and self.capture is None and not self.links:
                raise BackupError(f"item '{self.item_name}': the archive holds no file",
                                  self.item_name)
        except _Abort:
            pass
        except BackupError as exc:
            self.error = exc
        except TarSizeError as exc:
            self.error = beyond_recorded_size(self._inside(exc.name), exc.end, exc.size,
                                              exc.name)
        except (TarFormatError, ValueError) as exc:
            self.error = BackupError(f"item '{self.item_name}': inner archive is damaged: "
                                     f"{printable(str(exc))}", self.item_name)
        except OSError as exc:
            self.error = BackupError(f"item '{self.item_name}': cannot write "
                                     f"{exc.filename or ''}: {exc.strerror or exc}",
                                     self.item_name)
        except BaseException as exc:  # noqa: BLE001 - any failure must fail the item
            self.error = BackupError(f"item '{self.item_name}': internal error while "
                                     f"extracting: {type(exc).__name__}: {exc}", self.item_name)
        if self.error is not None:
            try:  # keep consuming so the producer can finish
                while self._pipe.read(1 << 16):
                    pass
            except _Abort:
                pass

    def _member(self, reader: TarReader, member, seen) -> None:
        if self.single and (member.name != self.item_name or seen or not member.isreg()):
            raise UnsafeArchiveError(f"item '{self.item_name}' may hold only the regular file "
                                     f"'{self.item_name}', not '{printable(member.name)}'",
                                     member.name)
        if len(seen) >= self.max_entries:
            raise UnsafeArchiveError(f"item '{self.item_name}' holds more than "
                                     f"{self.max_entries} entries (the limit for one item)",
                                     member.name)
        if member.size > MAX_FILE_SIZE:
            raise UnsafeArchiveError(f"member '{printable(member.name)}' claims "
                                     f"{member.size} bytes, more than any VM image", member.name)
        rel = relative_path(member.name, self.subdir, self.item_name)
        if rel in seen:
            raise UnsafeArchiveError(f"item '{self.item_name}': member '{member.name}' "
                                     "appears twice", member.name)
        seen.add(rel)
        if rel is not None:
            self._keep(rel, member.name)
        self._check_parents(rel, member.name)
        if rel in self._clear and not member.isdir():
            raise UnsafeArchiveError(f"item '{self.item_name}': member '{printable(member.name, 120)}' "
                                     "is a file or link where earlier members made a directory",
                                     member.name)
        if member.isdir():
            if rel is not None and self.dest is not None:
                path = os.path.join(self.dest, rel)
                self._claim(BLOCK, rel, BLOCK)
                os.makedirs(path, mode=0o755, exist_ok=True)
                self._dirs.add(path)
                if self.links:  # applied at the end: a read-only dir must take its files first
                    self._dir_times.append((path, member.mode & 0o777, member.mtime))
            return
        if self.links and rel is not None and (member.issym() or member.islnk()):
            self._link(member, rel)
            return
        if not member.isreg() or rel is None:
            raise UnsafeArchiveError(
                f"item '{self.item_name}': member '{member.name}' is not a regular file "
                "(links, devices and fifos are refused)", member.name)
        if self.capture is not None:
            if member.size > self.capture_limit:
                raise BackupError(f"'{member.name}' is larger than {self.capture_limit} bytes",
                                  member.name)
            self.capture[rel] = reader.read_data(member)
            return
        self.files.append(rel)
        self._regular.add(rel)
        path = None if self.dest is None else os.path.join(self.dest, rel)
        self._copy(reader, member, rel, path, member.mode & 0o777 if self.links else 0o644)

    def _inside(self, name: str) -> str:
        """A member's name without the item's subdir: 'private.img', not 'vm2/private.img'."""
        return printable(name[len(self.subdir):] if name.startswith(self.subdir) else name)

    def _claim(self, nbytes: int, rel: str, needed: int) -> None:
        if self.space is not None:
            self.space.claim(nbytes, f"'{printable(rel)}'", needed)

    def _parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            self._claim(BLOCK, parent, BLOCK)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            self._dirs.add(parent)

    def _keep(self, text: str, name: str) -> None:
        """Count a name kept until the item ends against the item's budget."""
        self._name_bytes += sys.getsizeof(text) + _SET_SLOT
        if self._name_bytes > self.max_name_bytes:
            raise UnsafeArchiveError(f"item '{self.item_name}': its member names need more "
                                     f"than {self.max_name_bytes} bytes to check (at "
                                     f"'{printable(name, 120)}')", name)

    def _check_parents(self, rel: str | None, name: str) -> None:
        """Refuse writing through a link or file made earlier (symlink then write, B41).

        Each parent directory is checked once, then remembered in `_clear`: it
        cannot become a link or file later, because a repeated name is refused
        and `_member` refuses a link or file named like a directory in `_clear`.
        The walk up stops at the first remembered parent, so the cost grows with
        the total length of the names, not with depth times members.
        """
        parent = rel.rpartition("/")[0] if rel else ""
        while parent and parent not in self._clear:
            if parent in self._symlinks or parent in self._regular:
                raise UnsafeArchiveError(f"item '{self.item_name}': member '{printable(name, 120)}' "
                                         "would be written through a link or file", name)
            self._keep(parent, name)
            self._clear.add(parent)
            parent = parent.rpartition("/")[0]

    def _link(self, member, rel: str) -> None:
        path = None if self.dest is None else os.path.join(self.dest, rel)
        if member.issym():
            self._symlinks.add(rel)
            if path is not None:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                self._claim(BLOCK, rel, BLOCK)
                os.symlink(member.linkname, path)  # the target verbatim (B37)
            return
        target = relative_path(member.linkname, self.subdir, self.item_name)
        if target not in self._regular:
            raise UnsafeArchiveError(f"item '{self.item_name}': hard link '{member.name}' must "
                                     "point to an earlier file of the same item", member.name)
        self._regular.add(rel)
        if path is not None:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.link(os.path.join(self.dest, target), path)

    def _finish_dirs(self) -> None:
        """Directory modes and times of a home, deepest first, once their files are in."""
        for path, mode, mtime in reversed(self._dir_times):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        self._dir_times.clear()

    def _pieces(self, reader: TarReader, member, rel: str):
        """The member's data; a piece past the member's size refuses it (B23).

        The reader already refuses such sparse maps; this keeps the promise for
        any reader: an image never grows past the size the archive records.
        """
        for offset, piece in reader.pieces(member):
            if offset + len(piece) > member.size:
                raise beyond_recorded_size(rel, offset + len(piece), member.size, member.name)
            yield offset, piece

    def _copy(self, reader: TarReader, member, rel: str, path: str | None,
              mode: int = 0o644) -> None:
        if path is None:
            for _piece in self._pieces(reader, member, rel):
                pass  # verify only: decode everything, write nothing
            return
        try:
            self._parent(path)
            self._claim(BLOCK, rel, member.stored)  # its inode and directory entry
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except OSError as exc:
            raise BackupError(f"cannot create {path}: {describe_os_error(exc)}", member.name) \
                from None
        try:
            end = 0
            left = member.stored  # data still to come, this piece included
            for offset, piece in self._pieces(reader, member, rel):
                end = _write_skipping_zeros(
                    fd, piece, offset, lambda n, need=left: self._claim(n, rel, need)) or end
                left -= len(piece)
            if end < member.size:  # a hole at the end (or zeros left unwritten)
                os.ftruncate(fd, member.size)
            if self.links:  # a home keeps its files' times; images need none
                os.utime(fd, (member.mtime, member.mtime))
        except OSError as exc:
            raise BackupError(f"cannot write {path}: {describe_os_error(exc)}", member.name) \
                from None
        finally:
            os.close(fd)


def beyond_recorded_size(rel: str, end: int, size: int, member: str) -> BackupError:
    return BackupError(f"'{printable(rel)}' holds data up to byte {end}, beyond its recorded "
                       f"size of {size} bytes: the backup is damaged or was made to do harm; "
                       "this VM is refused", member)


def _write_skipping_zeros(fd: int, data: bytes, offset: int, claim=None) -> int:
    """Write `data` at `offset`, leaving all-zero blocks as holes in the fresh file.

    `claim(n)` is called before each write of n bytes (it may raise to stop).
    Returns the end of what was actually written (0 if nothing was).
    """
    def write(view, at: int) -> None:
        if claim is not None:
            claim(len(view))
        os.pwrite(fd, view, at)

    if len(data) <= ZERO_BLOCK:  # small files: one write, no scanning
        if data != _ZEROS[:len(data)]:
            write(data, offset)
            return offset + len(data)
        return 0
    view = memoryview(data)
    run_start, end = None, 0
    for start in range(0, len(view), ZERO_BLOCK):
        block = data[start:start + ZERO_BLOCK]
        zero = block == _ZEROS[:len(block)]
        if zero and run_start is not None:
            write(view[run_start:start], offset + run_start)
            end, run_start = offset + start, None
        elif not zero and run_start is None:
            run_start = start
    if run_start is not None:
        write(view[run_start:], offset + run_start)
        end = offset + len(view)
    return end


class ItemDecoder:
    """Authenticated chunk bytes -> decrypt -> decompress -> extractor."""

    def __init__(self, extractor: InnerExtractor, passphrase: bytes, crypto_algorithm: str | None,
                 codec: compress.Codec | None):
        self.extractor = extractor
        self.decryptor = crypto.Decryptor(passphrase, crypto_algorithm) if crypto_algorithm else None
        self.decompressor = codec.decompressor() if codec is not None else None
        self.stage = "decrypt"

    def feed(self, data: bytes) -> None:
        if self.decryptor is not None:
            self.stage = "decrypt"
            data = self.decryptor.update(data)
        self._plain(data)

    def _plain(self, data: bytes) -> None:
        if self.decompressor is not None and data:
            self.stage = "decompress"
            for out in self.decompressor.iter_decompress(data):
                self.stage = "untar"
                self.extractor.feed(out)
        elif data:
            self.stage = "untar"
            self.extractor.feed(data)

    def finish(self) -> None:
        if self.decryptor is not None:
            self.stage = "decrypt"
            self._plain(self.decryptor.finalize())
        if self.decompressor is not None:
            self.stage = "decompress"
            tail = self.decompressor.finish()
            self.stage = "untar"
            self.extractor.feed(tail)
        self.stage = "untar"
        self.extractor.finish()
