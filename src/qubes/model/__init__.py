"""The domain: VM classes, their properties, the collection and its globals.

Pure: no XML, no libvirt, no subprocesses, no store. Host facts (memory,
CPUs, installed kernels) come from a `HostInfo` object given to the
collection. May import `qubes.props`, `qubes.errors`, `qubes.util`.

Vocabulary: *qid* is the Qubes id (0 = dom0); *netid* numbers a network
provider; a *template* lends its root image to the VMs based on it.
"""
