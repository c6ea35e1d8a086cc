"""The data pass of a restore or verify, and the registration of complete VMs."""
from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
import re
import stat
import tempfile
import time

from qubes.backup import compress, crypto
from qubes.backup.errors import BackupError
from qubes.backup.extract import InnerExtractor
from qubes.backup.format import MAX_HOME_ENTRIES, split_chunk_name
from qubes.backup.reader import VerifiedChunk
from qubes.backup.report import Problem, Reporter
from qubes.backup.plan import VMPlan, backed_up_vms
from qubes.backup.restore import BackupSource, RestoreOptions, RestoreResult
from qubes.backup.space import SpaceGuard
from qubes.errors import QubesError
from qubes.model.collection import GLOBAL_VM_REFS
from qubes.util.atomicfile import describe_os_error
from qubes.util.flock import lock, try_lock
from qubes.util.rmtree import remove_tree
from qubes.util.text import printable
from qubes.util.sparse import copy_tree_sparse

DOM0_HOME_PREFIX = "dom0-home/"
FILE_ITEMS = frozenset({"private.img", "root.img", "volatile.img", "icon.png", "firewall.xml",
                        "whitelisted-appmenus.list"})
DIR_ITEMS = frozenset({".", "kernels", "apps", "apps.templates"})
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_STAGING = re.compile(r"\.restore-\d{8}T\d{6}-(\d+)(?:-[a-z0-9_]+)?")
_FRESH = 60          # seconds: an unlocked staging dir this young may be just being made
_staging_locks: dict[str, int] = {}  # staging dir -> the fd holding its lock

# Properties that describe where a VM lived or its backup, not the VM itself.
NOT_COPIED = {"qid", "uuid", "name", "dir_path", "conf_file", "root_img", "private_img",
              "volatile_img", "template", "netvm", "netid", "backup_content", "backup_size",
              "backup_path", "backup_timestamp", "installed_by_rpm"}


class _OpenItem:
    def __init__(self, name: str, vm_name: str, plan: VMPlan | None, decoder, extractor):
        self.name = name
        self.vm_name = vm_name
        self.plan = plan
        self.decoder = decoder
        self.extractor = extractor
        self.next_index = 0
        self.failed = False


class DataPass:
    """Walks the data members once; every chunk is authenticated, selected items decoded."""

    def __init__(self, source: BackupSource, plans: list[VMPlan], staging: str | None,
                 options: RestoreOptions, reporter: Reporter):
        self.source = source
        self.plans = {p.path: p for p in plans if not p.skip}
        self.all_paths = {vm.backup_path: vm.name for vm in backed_up_vms(source.collection)}
        self.staging = staging
        self.options = options
        self.reporter = reporter
        self.problems: list[Problem] = []
        self.item: _OpenItem | None = None
        self.items_done: set[str] = set()
        self.ended_early = False
        self.done = 0
        self.total = _stream_size(source.reader)
        self.verify_only = options.verify_only
        self.home_dir: str | None = None
        self.home_seen = False
        self._pending = None
        self._pool = None
        self._guards: dict[int, SpaceGuard] = {}
        # named after the target directory (the staging dir's name means nothing to users)
        self.space = self._guard(os.path.dirname(staging)) if staging is not None else None
        self.spool_space = self.space if staging is not None and (
            options.tmpdir is None or _same_fs(options.tmpdir, staging)) else None

    def _guard(self, path: str) -> SpaceGuard:
        """One space account per filesystem: staging, spool and home may share one (B13)."""
        dev = os.stat(path).st_dev
        if dev not in self._guards:
            self._guards[dev] = SpaceGuard(path)
        return self._guards[dev]

    def problem(self, stage: str, cause: str, vm=None, member=None) -> None:
        p = Problem(stage, cause, vm, member)
        self.problems.append(p)
        self.reporter.problem(p)

    def _plan_for(self, item_name: str) -> tuple[VMPlan | None, str | None]:
        """The VM an item belongs to: its backup_path is the item name minus the last part."""
        if item_name.startswith(DOM0_HOME_PREFIX):
            return None, "dom0"
        path = item_name.rsplit("/", 1)[0] if "/" in item_name else None
        return self.plans.get(path), self.all_paths.get(path)

    def run(self) -> None:
        """Read and authenticate chunk N+1 while a worker decodes chunk N (two cores)."""
        reader = self.source.reader
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="decode")
        try:
            while True:
                member = reader.next()
                if member is None:
                    break
                self._chunk(member)
            self._wait()
            self.done = reader.offset  # the whole stream is read: the bar ends at 100 %
            self.reporter.progress(self.done, max(self.total, self.done))
        except BackupError as exc:
            self._wait()
            vm = self.item.vm_name if self.item else None
            self.ended_early = True
            self.problem("retrieve", str(exc), vm, exc.member)
            if self.item is not None:
                self.item.failed = True  # already reported above
                if self.item.plan is not None:
                    self.item.plan.failed = str(exc)
                if self.item.extractor is not None:
                    self.item.extractor.abort()
                self._discard_partial(self.item)
        except BaseException:
            if self.item is not None and self.item.extractor is not None:
                self.item.extractor.abort()  # interrupted: stop the worker, do not finish
            self._wait(quiet=True)
            self.item = None
            raise
        finally:
            self._close_item()
            self._pool.shutdown(wait=True)

    def _wait(self, quiet: bool = False) -> None:
        """Let the decoding of the previous chunk finish before anything else happens."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except BaseException:
                if not quiet:
                    raise

    def _chunk(self, member) -> None:
        """One data member. A misplaced or foreign member fails its item (or is reported)
        and the pass goes on: the VMs after it are still read (B05, B06)."""
        parsed = split_chunk_name(member.name)
        if parsed is None:
            for _piece in self.source.reader.pieces(member):
                pass
            self.problem("retrieve", f"unexpected archive member '{printable(member.name)}' "
                         "(ignored)", None, member.name)
            return
        base, index = parsed
        if self.item is None or self.item.name != base:
            self._wait()
            self._close_item()
            self._open_item(base, member.name, index)
        item = self.item
        if index != item.next_index:
            self._wait()
            self._fail_item(item, "retrieve", f"member '{member.name}' is out of order: "
                            f"expected '{base}.{item.next_index:03d}'", member.name)
        item.next_index = index + 1
        self.done = self.source.reader.offset  # headers, padding and .hmac files count too
        self.reporter.progress(min(self.done, self.total), self.total)
        keep = item.decoder is not None and not item.failed
        chunk = VerifiedChunk(self.source.reader, member, self.source.hmac_algorithm,
                              self.source.passphrase, self.options.tmpdir or self.staging, keep,
                              space=self.spool_space)
        try:
            self._wait()
        except BaseException:
            chunk.close()
            raise
        self._stopped_extractor(item)
        if not chunk.authentic:
            chunk.close()
            self._fail_item(item, "authenticate", f"member '{member.name}': HMAC "
                            "verification failed (corrupted or modified chunk)", member.name)
        elif chunk.no_space is not None:
            self._fail_item(item, "retrieve", str(chunk.no_space), member.name)
        elif keep and not item.failed:
            self._pending = self._pool.submit(self._decode_and_close, item, chunk)
        else:
            chunk.close()

    def _stopped_extractor(self, item: _OpenItem) -> None:
        """An extractor that gave up (out of space, a refused member) fails its item now,
        not after the rest of the item has been read: its partial data goes at once."""
        error = item.extractor.error if item.extractor is not None else None
        if error is not None and not item.failed:
            self._fail_item(item, item.decoder.stage, _damaged(error))

    def _decode_and_close(self, item: _OpenItem, chunk: VerifiedChunk) -> None:
        try:
            self._decode(item, chunk)
        finally:
            chunk.close()

    def _open_item(self, base: str, member_name: str, index: int) -> None:
        plan, vm_name = self._plan_for(base)
        kind = base.rsplit("/", 1)[-1]
        refused = None
        if base in self.items_done:
            refused = f"item '{printable(base)}' appears twice in the archive"
        elif vm_name is None:
            refused = f"archive item '{printable(base)}' belongs to no VM in qubes.xml"
        elif vm_name != "dom0" and kind not in FILE_ITEMS | DIR_ITEMS:
            refused = f"archive item '{printable(base)}' is not a file a VM has"
        elif vm_name == "dom0" and (self.home_seen or base != self._home_item(base)):
            refused = f"archive item '{printable(base)}' is not the dom0 home qubes.xml lists"
        elif index != 0:
            refused = f"item '{printable(base)}' starts with '{member_name}', expected '.000'"
        if refused is not None:  # its chunks are read and checked, nothing is decoded
            self.item = _OpenItem(base, vm_name, plan, None, None)
            self._fail_item(self.item, "retrieve", refused, member_name)
            return
        decoder = extractor = None
        if vm_name == "dom0":
            self.home_seen = True
            extractor = self._home_extractor(base)
            decoder = extractor and self.source.decoder(extractor)
        elif plan is not None:
            subdir = plan.path + "/"
            # a VM that failed already is decoded and checked, but no longer written
            dest = None if self.staging is None or plan.failed else \
                os.path.join(self.staging, plan.name)
            extractor = InnerExtractor(base, subdir, dest, single=kind in FILE_ITEMS,
                                       space=self.space if dest is not None else None)
            decoder = self.source.decoder(extractor)
            plan.items.append(base[len(subdir):])
        self.item = _OpenItem(base, vm_name, plan, decoder, extractor)

    def _home_item(self, found: str) -> str:
        """The one home item allowed: the one dom0's entry names, or (no such entry, B34)
        the first one found."""
        dom0 = self.source.collection.get(0)
        if dom0 is not None and dom0.backup_content and \
                dom0.backup_path.startswith(DOM0_HOME_PREFIX):
            return dom0.backup_path.rstrip("/")
        return found

    def _home_extractor(self, item_name: str) -> InnerExtractor | None:
        """dom0's home goes to a fresh directory, never over existing files (B34-B36)."""
        user = item_name[len(DOM0_HOME_PREFIX):]
        home = self.options.home
        if not _USER.fullmatch(user):
            self.problem("select", f"dom0 home item '{item_name}' has an invalid user name",
                         "dom0", item_name)
            return None
        if home is None or home.skip:
            self.reporter.message(f"dom0 home of '{user}' is authenticated but not restored "
                                  "(--skip-dom0-home)" if home else "")
            return None
        if user != home.user and not home.ignore_username_mismatch and not self.verify_only:
            self.problem("select", f"the dom0 home in the backup belongs to user '{user}', "
                         f"you are '{home.user}'; use --ignore-username-mismatch to restore it",
                         "dom0", item_name)
            return None
        dest = space = None
        if not self.verify_only:
            self.home_dir = _new_dir(home.parent,
                                     f"home-restore-{time.strftime('%Y-%m-%dT%H%M%S')}")
            dest = os.path.join(self.home_dir, "dom0-home")
            space = self._guard(self.home_dir)
        return InnerExtractor(item_name, DOM0_HOME_PREFIX, dest, links=True,
                              max_entries=MAX_HOME_ENTRIES, space=space)

    def _decode(self, item: _OpenItem, chunk: VerifiedChunk) -> None:
        try:
            for piece in chunk.data():
                item.decoder.feed(piece)
        except (crypto.DecryptError, compress.CorruptStream) as exc:
            self._fail_item(item, item.decoder.stage, f"{chunk.name}: {_damaged(exc)}",
                            chunk.name)

    def _fail_item(self, item: _OpenItem, stage: str, cause: str, member=None) -> None:
        if not item.failed:
            item.failed = True
            self.problem(stage, cause, item.vm_name, member or item.name)
            if item.plan is not None:
                item.plan.failed = item.plan.failed or cause
            if item.extractor is not None:
                item.extractor.abort()
            self._discard_partial(item)

    def _discard_partial(self, item: _OpenItem) -> None:
        """A failed VM's partial data is removed at once (its extractor has stopped), so
        its space is free for the VMs after it (B13); the other VMs are not touched."""
        if item.vm_name == "dom0":
            self.discard_home()
        elif item.plan is not None and self.staging is not None:
            remove_tree(os.path.join(self.staging, item.plan.name), ignore_errors=True)

    def discard_home(self) -> None:
        """A home restored only in part is removed: it is a new directory, nothing is lost."""
        if self.home_dir is not None:
            remove_tree(self.home_dir, ignore_errors=True)
            self.home_dir = None

    def _close_item(self) -> None:
        item, self.item = self.item, None
        if item is None:
            return
        self.items_done.add(item.name)
        if item.decoder is None or item.failed:
            return
        try:
            item.decoder.finish()
            if item.plan is not None:
                item.plan.files.update(item.extractor.files)
        except (crypto.DecryptError, compress.CorruptStream, BackupError) as exc:
            item.failed = True
            self.problem(item.decoder.stage, _damaged(exc), item.vm_name, item.name)
            if item.plan is not None:
                item.plan.failed = item.plan.failed or str(exc)
            self._discard_partial(item)


def _damaged(exc: Exception) -> str:
    """The header verified, so the passphrase is right: never blame it for bad data (B02)."""
    if isinstance(exc, crypto.DecryptError):
        return ("the encrypted data is damaged or incomplete (the passphrase is right: it "
                "verified the header)")
    return str(exc)


def _stream_size(reader) -> int:
    """The backup's size when it is a regular file (for progress); 0 when unknown."""
    try:
        st = os.fstat(reader.source.fileno())
    except (AttributeError, OSError, ValueError):
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def required_files(vm) -> list[str]:
    """The images without which a VM of this kind is not complete."""
    return ["private.img", "root.img"] if vm.updateable else ["private.img"]


def check_complete(plans: list[VMPlan], pass_: DataPass) -> None:
    """A VM whose data never arrived is a failure, not a silent skip (B55)."""
    for plan in plans:
        if plan.failed or plan.skip:
            continue
        missing = [f for f in required_files(plan.vm) if f not in plan.files]
        if missing and pass_.ended_early:
            plan.failed = ("not read: its data comes after the point where the archive could "
                           "not be read any further (see the error above)")
        elif missing:
            plan.failed = f"{', '.join(missing)} missing from the archive"
            pass_.problem("retrieve", plan.failed, plan.name)
    dom0 = pass_.source.collection.get(0)
    home = pass_.options.home
    if dom0 is not None and dom0.backup_content and not pass_.home_seen \
            and not (home is not None and home.skip) and not pass_.ended_early:
        pass_.problem("retrieve", f"qubes.xml lists dom0's home ({dom0.backup_path}) but the "
                      "archive does not hold it (complete)", "dom0")


def staging_dir(base_dir: str, reporter: Reporter) -> str:
    """A new staging directory in the target, locked (flock) until `discard`.

    Leftovers of killed runs are removed first and never reused or merged
    (B13): a leftover is a staging directory whose lock nobody holds. The pid
    in the name is not trusted for that (after a reboot it may be anybody's);
    it only spares a directory that its live restore has made but not yet locked.
    """
    for entry in os.scandir(base_dir) if os.path.isdir(base_dir) else ():
        match = _STAGING.fullmatch(entry.name)
        if match and _abandoned(entry.path, int(match.group(1))):
            remove_tree(entry.path, ignore_errors=True)
            reporter.warning(f"removed {entry.path}, left by an interrupted restore")
    prefix = f".restore-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-"
    path = fd = None
    try:
        os.makedirs(base_dir, exist_ok=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=base_dir)  # always a new directory
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        lock(fd)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if path is not None:
            os.rmdir(path)
        raise QubesError(f"cannot create a staging directory in {base_dir}: "
                         f"{describe_os_error(exc)}") from None
    _staging_locks[path] = fd
    return path


def _abandoned(path: str, pid: int) -> bool:
    """True for a staging directory no running restore holds."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or not a directory of ours: leave it alone
    try:
        try:
            if not try_lock(fd):
                return not _alive(pid)  # no locks on this filesystem: the pid is all we have
        except BlockingIOError:
            return False  # locked: its restore is running
        young = time.time() - os.fstat(fd).st_mtime < _FRESH
        return not (young and _alive(pid))
    finally:
        os.close(fd)


def _same_fs(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _new_dir(parent: str, name: str) -> str:
    """parent/name, or name-2, name-3 ... when taken: never an existing directory."""
    for n in range(1, 100):
        path = os.path.join(parent, name if n == 1 else f"{name}-{n}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise BackupError(f"cannot create {path} for the dom0 home: "
                              f"{describe_os_error(exc)}") from None
    raise BackupError(f"no free name for {name} in {parent}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register(app, plans: list[VMPlan], staging: str, reporter: Reporter,
             result: RestoreResult) -> None:
    """Move each complete VM's data into place and add it to `app` (under the write lock).

    Each move is undone (back into the staging directory, then removed) if the
    transaction does not save.
    """
    failed = {p.target_name for p in plans if p.failed}
    for plan in plans:
        if plan.skip:
            continue
        if not plan.failed and plan.template in failed:
            plan.failed = f"its template '{plan.template}' was not restored"
            failed.add(plan.target_name)
            result.failed[plan.name] = plan.failed
            reporter.problem(Problem("register", plan.failed, plan.name))
        if plan.failed:
            continue
        if not plan.netvm_default and plan.netvm in failed:
            reporter.warning(f"VM '{plan.target_name}': its netvm '{plan.netvm}' was not "
                             "restored; it comes back without network")
            plan.netvm = None
        if app.get(plan.target_name) is not None:  # created while we were extracting
            plan.failed = f"a VM named '{plan.target_name}' was created meanwhile; not touching it"
            failed.add(plan.target_name)
            result.failed[plan.name] = plan.failed
            reporter.problem(Problem("register", plan.failed, plan.name))
            continue
        new = None
        try:
            new = _create(app, plan, reporter)
            src = os.path.join(staging, plan.name)
            os.makedirs(src, exist_ok=True)
            if os.path.lexists(new.dir_path):  # B33: never merge into a leftover
                aside = f"{new.dir_path}.leftover-{time.strftime('%Y%m%dT%H%M%S')}"
                os.rename(new.dir_path, aside)
                app.on_rollback(lambda a=aside, b=new.dir_path: os.rename(a, b))
                reporter.warning(f"directory {new.dir_path} was in the way (no VM owns it); "
                                 f"moved it to {aside}")
            os.makedirs(os.path.dirname(new.dir_path), exist_ok=True)
            _move_in(src, new.dir_path)
            app.on_rollback(lambda a=new.dir_path, b=src: _move_in(a, b))
            result.restored.append(plan.target_name)
        except (QubesError, OSError) as exc:
            cause = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            if new is not None and app.get(new.qid) is new:  # only what this restore made
                app.remove(new)
            plan.failed = cause
            failed.add(plan.target_name)
            result.failed[plan.name] = cause
            reporter.problem(Problem("register", cause, plan.name))


def _move_in(src: str, dst: str) -> None:
    """Rename; across filesystems (a VM directory on another disk) copy, then remove."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_tree_sparse(src, dst)
        remove_tree(src)


def adopt_globals(app, backup, plans: list[VMPlan], reporter: Reporter) -> None:
    """Global defaults the target lacks are taken from the backup when their VM came back.

    Without this a restored AppVM that follows the default NetVM would end up offline.
    """
    came_back = {p.name: p.target_name for p in plans if not p.skip and not p.failed}
    for attr in GLOBAL_VM_REFS:
        theirs = getattr(backup, attr)
        if getattr(app, attr) is None and theirs is not None and theirs.name in came_back:
            app.set_global(attr, came_back[theirs.name])
            reporter.message(f"{attr.replace('_', '-')} set to '{came_back[theirs.name]}' "
                             "as in the backup")
    kernel = backup.default_kernel
    if app.default_kernel is None and kernel is not None and came_back:
        try:
            app.set_global("default_kernel", kernel)
            reporter.message(f"default-kernel set to '{kernel}' as in the backup")
        except QubesError:
            reporter.warning(f"the backup's default kernel '{kernel}' is not installed here; "
                             "VMs that follow it have no kernel until one is set")


def _create(app, plan: VMPlan, reporter: Reporter):
    """The new VM in `app`, or nothing in it: a half-made VM is removed before raising."""
    new = app.add_new_vm(plan.vm.TYPE, plan.target_name, template=plan.template)
    try:
        _copy_settings(new, plan, reporter)
    except BaseException:
        app.remove(new)
        raise
    return new


def _copy_settings(new, plan: VMPlan, reporter: Reporter) -> None:
    vm = plan.vm
    for prop in vm.property_list():
        name = prop.name
        if name in NOT_COPIED or vm.is_default(name) or not new.has_property(name):
            continue
        try:
            new.set_prop(name, getattr(vm, name))
        except QubesError as exc:
            reporter.warning(f"VM '{plan.name}': {exc}; using the default")
    if not plan.netvm_default and vm.HAS_NETVM:
        new.set_prop("netvm", plan.netvm)
    devices = [f"PCI devices {new.pcidevs}"] if new.pcidevs else []
    if new.has_property("drive") and new.drive:
        devices.append(f"drive {new.drive}")
    if devices:  # a backup from another machine names devices of that machine
        reporter.warning(f"VM '{plan.target_name}' comes back with {' and '.join(devices)} "
                         "from the backup; check them before starting it")


def discard(path: str | None) -> None:
    """Remove a staging directory (and give up its lock)."""
    if path:
        remove_tree(path, ignore_errors=True)
        fd = _staging_locks.pop(path, None)
        if fd is not None:
            os.close(fd)
