"""libvirt implementation; the only module that imports libvirt, on first use."""
from __future__ import annotations

from typing import Iterable

from qubes.errors import VMMError
from qubes.vmm.base import DomainInfo, DomainState

_STATE_MAP = {
    1: DomainState.RUNNING,     # VIR_DOMAIN_RUNNING
    2: DomainState.RUNNING,     # BLOCKED
    3: DomainState.PAUSED,
    4: DomainState.HALTING,     # SHUTDOWN (in progress)
    5: DomainState.DYING,       # SHUTOFF of an active domain
    6: DomainState.CRASHED,
    7: DomainState.SUSPENDED,   # PMSUSPENDED
}


class LibvirtHypervisor:
    offline = False

    def __init__(self, uri: str):
        self.uri = uri
        self._conn = None
        self._libvirt = None

    @property
    def conn(self):
        """The connection, opened on first use with libvirt's noisy handler silenced."""
        if self._conn is None:
            try:
                import libvirt  # noqa: PLC0415  (lazy by design)
            except ImportError:
                raise VMMError("the libvirt Python binding is not installed; "
                               "install libvirt-python or use --offline-mode") from None
            libvirt.registerErrorHandler(lambda *_args: None, None)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise VMMError(f"cannot connect to the hypervisor at {self.uri}: "
                               f"{exc.get_error_message()} (use --offline-mode to work on "
                               "qubes.xml alone)") from None
            self._libvirt = libvirt
        return self._conn

    def domain_states(self, names: Iterable[str]) -> dict[str, DomainInfo]:
        """One listing call; a domain that vanishes meanwhile counts as halted (B78)."""
        wanted = set(names)
        result = {name: DomainInfo(DomainState.HALTED) for name in wanted}
        conn = self.conn
        error = self._libvirt.libvirtError
        try:
            domains = conn.listAllDomains(0)
        except error as exc:
            raise VMMError(f"listing domains failed: {exc.get_error_message()}") from None
        for dom in domains:
            try:
                name = dom.name()
                if name not in wanted or not dom.isActive():
                    continue
                state, _maxmem, mem, _ncpu, cputime = dom.info()
                result[name] = DomainInfo(_STATE_MAP.get(state, DomainState.NA), dom.ID(),
                                          mem, cputime)
            except error as exc:
                if exc.get_error_code() == self._libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # vanished since the listing (B78)
                raise VMMError(f"reading domain state failed: {exc.get_error_message()}") from None
        return result

    def host_memory_mb(self) -> int:
        return int(self.conn.getInfo()[1])

    def host_cpus(self) -> int:
        return int(self.conn.getInfo()[2])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
