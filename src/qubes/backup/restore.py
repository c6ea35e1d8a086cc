"""Restore or verify a format-3 backup: authenticate, plan, extract, then register.

Order of work (BACKUP-FORMAT.md §9): header authenticated and parsed;
qubes.xml authenticated, decoded and parsed; a plan (which VMs, names,
templates, netvms) made and checked before anything is written; one pass
over the data members, each chunk authenticated before it is decoded;
data extracted into a staging directory inside the target filesystem;
a VM registered in qubes.xml only after all of its data is in place.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import BinaryIO

from qubes.backup import compress, crypto
from qubes.backup.errors import BackupError
from qubes.backup.extract import InnerExtractor, ItemDecoder
from qubes.backup.format import QUBES_XML_MAX, HeaderError, parse_header
from qubes.backup.reader import OuterReader, authenticate_header, read_hmac
from qubes.backup.report import Problem
from qubes.errors import QubesError

_BACKUP_PATH = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class RestoreOptions:
    passphrase: bytes
    vms: tuple[str, ...] = ()
    verify_only: bool = False
    tmpdir: str | None = None


@dataclass
class VMPlan:
    name: str
    vm: object
    path: str
    template: str | None = None
    netvm: str | None = None
    netvm_default: bool = True
    items: list[str] = field(default_factory=list)
    failed: str | None = None


@dataclass
class RestoreResult:
    restored: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems


class BackupSource:
    """An authenticated, parsed backup: header, embedded collection, remaining stream."""

    def __init__(self, stream: BinaryIO, label: str, passphrase: bytes):
        self.reader = OuterReader(stream, label)
        self.passphrase = passphrase
        header_bytes, self.hmac_algorithm = authenticate_header(self.reader, passphrase)
        try:
            self.header = parse_header(header_bytes)
        except HeaderError as exc:
            raise BackupError(f"backup-header: {exc}", "backup-header") from None
        self._check_header()
        self.collection = self._read_collection()

    def _check_header(self) -> None:
        h = self.header
        if h.version != 3:
            raise BackupError(f"backup format version {h.version} is not supported by this "
                              "tool yet (it restores format 3)", "backup-header")
        if h.hmac_algorithm.upper() != self.hmac_algorithm.upper():
            raise BackupError(f"backup-header says hmac-algorithm={h.hmac_algorithm} but was "
                              f"authenticated with {self.hmac_algorithm}", "backup-header")
        try:
            self.codec = compress.codec_for_filter(h.compression_filter) if h.compressed else None
            if h.encrypted:
                crypto.cipher_key_length(h.crypto_algorithm)
        except (ValueError, crypto.UnsupportedAlgorithm) as exc:
            raise BackupError(f"backup-header: {exc}", "backup-header") from None

    def decoder(self, extractor: InnerExtractor) -> ItemDecoder:
        algo = self.header.crypto_algorithm if self.header.encrypted else None
        return ItemDecoder(extractor, self.passphrase, algo, self.codec)

    def _read_collection(self):
        from qubes.store.codec import load_collection

        member = self.reader.next()
        if member is None or member.name != "qubes.xml.000":
            raise BackupError("the backup has no qubes.xml.000 after its header",
                              member.name if member else None)
        untrusted = self.reader.read_small(member, QUBES_XML_MAX + 65536)
        expected = read_hmac(self.reader, member.name)
        mac = crypto.new_hmac(self.hmac_algorithm, self.passphrase)
        mac.update(untrusted)
        if not crypto.digests_equal(mac.hexdigest(), expected):
            raise BackupError("member 'qubes.xml.000': HMAC verification failed "
                              "(corrupted or modified)", member.name)
        files: dict = {}
        extractor = InnerExtractor("qubes.xml", "", None, capture=files,
                                   capture_limit=QUBES_XML_MAX)
        decoder = self.decoder(extractor)
        try:
            decoder.feed(untrusted)
            decoder.finish()
        except (crypto.DecryptError, compress.CorruptStream) as exc:
            extractor.abort()
            raise BackupError(f"member 'qubes.xml.000': {exc}", member.name) from None
        if "qubes.xml" not in files:
            raise BackupError("member 'qubes.xml.000' holds no qubes.xml", member.name)
        return load_collection(files["qubes.xml"], "/nonexistent", source="qubes.xml in the backup",
                               strict=True)


def backed_up_vms(collection) -> list:
    return [vm for vm in collection if vm.backup_content and not vm.is_adminvm]


def check_backup_paths(vms) -> None:
    """Safe, distinct, not nested: each item then belongs to exactly one VM."""
    seen: dict[str, str] = {}
    for vm in vms:
        path = vm.backup_path
        if not _BACKUP_PATH.fullmatch(path) or {".", ".."} & set(path.split("/")) \
                or path.startswith("dom0-home"):
            raise BackupError(f"VM '{vm.name}': unsafe backup_path '{path}' in qubes.xml")
        for other, owner in seen.items():
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise BackupError(f"VMs '{owner}' and '{vm.name}' have overlapping backup paths "
                                  f"'{other}' and '{path}' in qubes.xml")
        seen[path] = vm.name


def make_plan(source: BackupSource, target, options: RestoreOptions) -> list[VMPlan]:
    """Decide which VMs come back and with which template/netvm; raise on any conflict."""
    candidates = {vm.name: vm for vm in backed_up_vms(source.collection)}
    names = list(options.vms) or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise QubesError(f"not in this backup: {', '.join(unknown)} "
                         f"(the backup holds: {', '.join(candidates) or 'no VM'})")
    check_backup_paths(list(candidates.values()))
    plans, problems = [], []
    for name in names:
        vm = candidates[name]
        plan = VMPlan(name, vm, vm.backup_path)
        plan.template = vm.template.name if vm.template is not None else None
        plan.netvm_default = vm.is_default("netvm")
        plan.netvm = vm.netvm.name if vm.netvm is not None and vm.HAS_NETVM else None
        plans.append(plan)
    if options.verify_only or target is None:
        return plans
    restored = {p.name for p in plans}
    for plan in plans:
        if target.get(plan.name) is not None:
            problems.append(f"VM '{plan.name}' already exists on this system")
        if plan.template and plan.template not in restored:
            host_tpl = target.get(plan.template)
            if host_tpl is None or host_tpl.TYPE != plan.vm.TEMPLATE_TYPE:
                problems.append(f"VM '{plan.name}': template '{plan.template}' is neither in "
                                "the restore set nor on this system")
        if plan.netvm and not plan.netvm_default and plan.netvm not in restored:
            host_net = target.get(plan.netvm)
            if host_net is None or not host_net.provides_network:
                problems.append(f"VM '{plan.name}': netvm '{plan.netvm}' is neither in the "
                                "restore set nor on this system")
    if problems:
        raise QubesError("cannot restore:\n  " + "\n  ".join(problems))
    return _dependency_order(plans)


def _dependency_order(plans: list[VMPlan]) -> list[VMPlan]:
    """Templates first, then network providers along their chain, then the rest."""
    def rank(p: VMPlan):
        depth, vm = 0, p.vm
        while vm.HAS_NETVM and vm.netvm is not None and depth < 300:
            vm, depth = vm.netvm, depth + 1
        if p.vm.is_template:
            return (0, 0, p.vm.qid)
        if p.vm.provides_network:
            return (1, depth, p.vm.qid)
        return (2, 0, p.vm.qid)
    return sorted(plans, key=rank)
