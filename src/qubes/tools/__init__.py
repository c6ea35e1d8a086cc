"""The qvm-* commands: each parses its arguments, calls the library, maps errors.

`tools/_cli.py` owns the only exception-to-exit-code mapping. Tools may
import anything in `qubes`; nothing in `qubes` imports `tools`.
"""
