"""qubes-core: the Qubes OS administrative core on libvirt."""

__version__ = "0.1.0"
