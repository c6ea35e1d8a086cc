"""Small standard-library-only helpers (names, sizes, atomic files, sparse copies).

May import only `qubes.errors` and the standard library.
"""
