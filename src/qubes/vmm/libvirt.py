"""libvirt implementation; the only module that imports libvirt, on first use."""
from __future__ import annotations

import os
import subprocess
from typing import Iterable

from qubes.errors import VMMError
from qubes.vmm import domain_xml
from qubes.vmm.base import DomainInfo, DomainSpec, DomainState, HostMemory, NicSpec

_STATE_MAP = {
    1: DomainState.RUNNING,     # VIR_DOMAIN_RUNNING
    2: DomainState.RUNNING,     # BLOCKED
    3: DomainState.PAUSED,
    4: DomainState.HALTING,     # SHUTDOWN (in progress)
    5: DomainState.DYING,       # SHUTOFF of an active domain
    6: DomainState.CRASHED,
    7: DomainState.SUSPENDED,   # PMSUSPENDED
}


def _ip(*args: str) -> None:
    """Host bridges are made with iproute2: libvirt's own networks need iptables and dnsmasq."""
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise VMMError("the ip command (iproute2) is not installed") from None
    if proc.returncode != 0:
        raise VMMError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


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
        """ONE libvirt call for every running domain's state, memory and CPU time (B76).

        Domains not in the answer are halted; one that vanishes meanwhile is
        simply absent from it (B78).
        """
        wanted = set(names)
        result = {name: DomainInfo(DomainState.HALTED) for name in wanted}
        lv = self._libvirt_module()
        stats = (lv.VIR_DOMAIN_STATS_STATE | lv.VIR_DOMAIN_STATS_CPU_TOTAL
                 | lv.VIR_DOMAIN_STATS_BALLOON)
        try:
            answer = self.conn.getAllDomainStats(
                stats, lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        except lv.libvirtError as exc:
            raise VMMError(f"listing domains failed: {exc.get_error_message()}") from None
        for dom, record in answer:
            name = dom.name()  # name and id travel with the answer: no further calls
            if name not in wanted:
                continue
            state = _STATE_MAP.get(record.get("state.state", 0), DomainState.NA)
            memory = record.get("balloon.current") or record.get("balloon.maximum") or 0
            result[name] = DomainInfo(state, dom.ID(), int(memory),
                                      int(record.get("cpu.time", 0)))
        return result

    def _libvirt_module(self):
        self.conn  # noqa: B018  (connects and imports libvirt on first use)
        return self._libvirt

    # --- actions -------------------------------------------------------------

    def _fail(self, what: str, name: str, exc) -> VMMError:
        return VMMError(f"{what} '{name}' failed: {exc.get_error_message()}")

    def _lookup(self, name: str):
        """The domain, or None when libvirt has none of that name."""
        try:
            return self.conn.lookupByName(name)
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == self._libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._fail("looking up", name, exc) from None

    def _active(self, dom, name: str) -> bool:
        """Whether `dom` runs; one undefined since it was looked up does not (a DispVM)."""
        if dom is None:
            return False
        try:
            return bool(dom.isActive())
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == self._libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self._fail("asking the state of", name, exc) from None

    def _domain(self, name: str):
        dom = self._lookup(name)
        if not self._active(dom, name):
            raise VMMError(f"VM '{name}' is not running")
        return dom

    def _forget(self, dom) -> None:
        """Destroy and undefine a domain this process just defined; best effort.

        Used when its start failed: the error of the start is the one to report.
        """
        error = self._libvirt.libvirtError
        try:
            if dom.isActive():
                dom.destroy()
        except error:
            pass
        try:
            dom.undefine()
        except error:
            pass

    def start(self, spec: DomainSpec) -> str | None:
        """Define from `spec` (libvirt follows qubes.xml at every start), then create.

        A definition of the same name that another living collection owns is
        never replaced; one whose collection directory is gone is (B65), and
        the returned note says so.
        """
        note = None
        old = self._lookup(spec.name)
        if old is not None:
            owner = domain_xml.owner_of(old.XMLDesc(0))
            if old.isActive():
                raise VMMError(f"VM '{spec.name}' is already running"
                               + ("" if owner == spec.owner else
                                  f" for another collection ({owner or 'not ours'})"))
            if owner != spec.owner:
                if owner is None or os.path.isdir(owner):
                    raise VMMError(f"libvirt already has a domain named '{spec.name}' that "
                                   f"belongs to another collection ({owner or 'not ours'})")
                note = (f"replaced the libvirt domain '{spec.name}' left by a removed "
                        f"collection ({owner})")
            if owner != spec.owner or old.UUIDString() != spec.uuid:
                old.undefine()
        error = self._libvirt.libvirtError
        dom = None
        try:
            dom = self.conn.defineXML(domain_xml.render(spec))
            dom.create()
        except BaseException as exc:
            # A start that failed, or was interrupted, leaves no domain behind (B87).
            if dom is not None:
                self._forget(dom)
            if isinstance(exc, error):
                raise self._fail("starting", spec.name, exc) from None
            raise
        return note

    def _act(self, name: str, what: str, method: str, *, stops: bool = False) -> None:
        """Call `method` on the running domain `name`.

        `stops` (shutdown, kill): a domain found off, or gone, at any point is
        done, not an error: the caller's state check may be a moment old, and a
        guest that powers off meanwhile, or a DisposableVM whose definition the
        watcher removed, has done what was asked (B92, B93).
        """
        dom = self._lookup(name)
        if not self._active(dom, name):
            if stops:
                return
            raise VMMError(f"VM '{name}' is not running")
        try:
            getattr(dom, method)()
        except self._libvirt.libvirtError as exc:
            if self._active(dom, name):
                raise self._fail(what, name, exc) from None
            if not stops:
                raise VMMError(f"VM '{name}' is not running") from None

    def shutdown(self, name: str) -> None:
        """Press the power button; a domain already off is left as it is."""
        self._act(name, "shutting down", "shutdown", stops=True)

    def kill(self, name: str) -> None:
        """Pull the power; a domain already off is left as it is."""
        self._act(name, "killing", "destroy", stops=True)

    def pause(self, name: str) -> None:
        self._act(name, "pausing", "suspend")

    def unpause(self, name: str) -> None:
        self._act(name, "unpausing", "resume")

    def undefine(self, name: str, owner: str) -> None:
        """Destroy and forget `name`, if it is `owner`'s; others' domains are left alone."""
        dom = self._lookup(name)
        if dom is None:
            return
        try:
            if domain_xml.owner_of(dom.XMLDesc(0)) != owner:
                return
            if dom.isActive():
                try:
                    dom.destroy()
                except self._libvirt.libvirtError:
                    if dom.isActive():
                        raise
                    # it powered off by itself between the two calls
            dom.undefine()
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() != self._libvirt.VIR_ERR_NO_DOMAIN:
                raise self._fail("removing the definition of", name, exc) from None

    def owned_domains(self, owner: str) -> dict[str, tuple[DomainState, str]]:
        found = {}
        for dom in self.conn.listAllDomains(0):
            try:
                if domain_xml.owner_of(dom.XMLDesc(0)) != owner:
                    continue
                state = _STATE_MAP.get(dom.info()[0], DomainState.NA) if dom.isActive() \
                    else DomainState.HALTED
                found[dom.name()] = (state, dom.UUIDString())
            except self._libvirt.libvirtError as exc:
                if exc.get_error_code() != self._libvirt.VIR_ERR_NO_DOMAIN:
                    raise VMMError(f"listing domains failed: {exc.get_error_message()}") \
                        from None
        return found

    def ensure_network(self, network: str, bridge: str) -> None:
        if not os.path.isdir(f"/sys/class/net/{bridge}"):
            _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", bridge, "up")
        conn = self.conn
        error = self._libvirt.libvirtError
        try:
            net = conn.networkLookupByName(network)
        except error:
            net = None
        try:
            if net is None:
                conn.networkCreateXML(domain_xml.network_xml(network, bridge))
            elif not net.isActive():
                net.create()
        except error as exc:
            raise VMMError(f"creating the network '{network}' failed: "
                           f"{exc.get_error_message()}") from None

    def remove_network(self, network: str, bridge: str | None = None) -> None:
        error = self._libvirt.libvirtError
        try:
            net = self.conn.networkLookupByName(network)
        except error:
            net = None  # gone already (ours are transient: a libvirtd restart drops them)
        try:
            if net is not None and bridge is None:
                bridge = domain_xml.bridge_of(net.XMLDesc(0))
            if net is not None:
                persistent = net.isPersistent()  # a transient one is gone once destroyed
                if net.isActive():
                    net.destroy()
                if persistent:
                    net.undefine()
        except error as exc:
            raise VMMError(f"removing the network '{network}' failed: "
                           f"{exc.get_error_message()}") from None
        if bridge and os.path.isdir(f"/sys/class/net/{bridge}"):
            _ip("link", "del", bridge)

    def networks(self, prefix: str) -> list[str]:
        try:
            return sorted(n.name() for n in self.conn.listAllNetworks(0)
                          if n.name().startswith(prefix))
        except self._libvirt.libvirtError as exc:
            raise VMMError(f"listing networks failed: {exc.get_error_message()}") from None

    def attach_nic(self, name: str, nic: NicSpec) -> None:
        dom = self._domain(name)
        try:
            dom.attachDeviceFlags(domain_xml.nic_xml(nic), self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except self._libvirt.libvirtError as exc:
            raise self._fail("attaching a network interface to", name, exc) from None

    def detach_nic(self, name: str, mac: str) -> None:
        dom = self._domain(name)
        import xml.etree.ElementTree as ET  # noqa: PLC0415
        for node in ET.fromstring(dom.XMLDesc(0)).iter("interface"):
            mac_node = node.find("mac")
            if mac_node is not None and mac_node.get("address", "").lower() == mac.lower():
                try:
                    dom.detachDeviceFlags(ET.tostring(node, encoding="unicode"),
                                          self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except self._libvirt.libvirtError as exc:
                    raise self._fail("detaching a network interface from", name, exc) from None

    # --- host ---------------------------------------------------------------

    def host_memory_mb(self) -> int:
        return int(self.conn.getInfo()[1])

    def host_free_memory_mb(self) -> int:
        """Memory no process uses now; not what a start may count on (see host_memory)."""
        return int(self.conn.getFreeMemory() // (1024 * 1024))

    def host_memory(self) -> HostMemory:
        """Host RAM and what the running domains, ours or not, are assigned of it.

        Why not getFreeMemory(): QEMU allocates guest memory lazily, so idle
        guests leave it looking free although they may claim it at any moment
        (B86, B87). One bulk call covers every running domain; only a driver
        that reports no balloon figures (the test driver) costs one info() call
        per domain.
        """
        lv = self._libvirt_module()
        try:
            total_mb = int(self.conn.getInfo()[1])
            answer = self.conn.getAllDomainStats(
                lv.VIR_DOMAIN_STATS_BALLOON, lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        except lv.libvirtError as exc:
            raise VMMError(f"reading the host's memory failed: {exc.get_error_message()}") \
                from None
        assigned_kib = domains = 0
        for dom, record in answer:
            kib = record.get("balloon.current")
            if kib is None:
                try:
                    kib = dom.info()[2]
                except lv.libvirtError:
                    continue  # stopped since the listing
            assigned_kib += int(kib)
            domains += 1
        return HostMemory(total_mb, -(-assigned_kib // 1024), domains)

    def host_cpu_times(self) -> tuple[int, int]:
        """(busy, total) nanoseconds over all CPUs since boot."""
        stats = self.conn.getCPUStats(self._libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
        total = sum(int(v) for v in stats.values())
        return total - int(stats.get("idle", 0)) - int(stats.get("iowait", 0)), total

    def host_cpus(self) -> int:
        return int(self.conn.getInfo()[2])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
