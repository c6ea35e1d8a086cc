"""VM files on disk: directories and sparse images (QUBES-XML.md §13).

Functions take plain values (paths, sizes), never VM objects. May import
`qubes.util` and `qubes.errors`.
"""
