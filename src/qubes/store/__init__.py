"""qubes.xml on disk: the core2 codec, the lock, and the open/save context managers.

The only part of the package that imports an XML library (besides the
backup reader of the embedded copy). May import `qubes.model`, `qubes.util`,
`qubes.errors`. A failed save leaves the previous file byte-identical.
"""
