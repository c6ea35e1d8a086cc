"""What every command shares: common options, the context, and the exit funnel.

Exit codes (TOOLS.md §1.1): 0 ok, 1 runtime error (`ERROR: ` line on
stderr), 2 usage error (argparse), 128+N when stopped by signal N.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from typing import Callable

from qubes.errors import ExitCode, NoSuchVMError, QubesError
from qubes.util.text import SafeTextStream

DEFAULT_BASE_DIR = "/var/lib/qubes"

#: Injection hooks for tests: callables taking the parsed arguments and
#: returning the hypervisor / host object a Context should use.
hypervisor_factory: Callable | None = None
host_factory: Callable | None = None


class UsageError(Exception):
    """A combination of arguments that argparse cannot check; exits 2 like argparse."""


def _notes(exc: BaseException) -> str:
    """What the library cleaned up on the way out (added with `add_note`)."""
    notes = getattr(exc, "__notes__", None)
    return "; " + "; ".join(notes) if notes else ""


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so cleanup code runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def base_dir() -> str:
    return os.environ.get("QUBES_BASE_DIR") or DEFAULT_BASE_DIR


class Context:
    """What a command needs besides its arguments; the hypervisor is made on first use."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.base_dir = base_dir()
        self._host = None
        self._hypervisor = None

    @property
    def host(self):
        if self._host is None:
            if host_factory is not None:
                self._host = host_factory(self.args)
            else:
                from qubes.util.host import LocalHost
                self._host = LocalHost(self.base_dir)
        return self._host

    @property
    def hypervisor(self):
        if self._hypervisor is None:
            if hypervisor_factory is not None:
                self._hypervisor = hypervisor_factory(self.args)
            else:
                from qubes import vmm
                self._hypervisor = vmm.connect(offline=getattr(self.args, "offline_mode", False))
        return self._hypervisor

    def warn(self, message: str) -> None:
        print(f"WARNING: {message}", file=sys.stderr)

    def read(self):
        """The collection for reading; load warnings are shown once."""
        from qubes.store.access import read_collection
        return read_collection(self.base_dir, self.host, warn=self._warn_once)

    def modify(self):
        """The collection for a read-modify-write under the exclusive lock."""
        from qubes.store.access import modify_collection
        return modify_collection(self.base_dir, self.host, warn=self._warn_once)

    def _warn_once(self, message: str) -> None:
        shown = self.__dict__.setdefault("_shown_warnings", set())
        if message not in shown:
            shown.add(message)
            self.warn(message)

    def info(self, message: str) -> None:
        if not getattr(self.args, "quiet", False):
            print(message)


def vm_by_name(app, name: str):
    vm = app.get(name)
    if vm is None:
        raise NoSuchVMError(name)
    return vm


def make_parser(prog: str, description: str, *,
                force_root: bool = False) -> argparse.ArgumentParser:
    """No abbreviated options: a removed or misspelt option must be refused, not taken
    for the longer one it starts (CASES.md B32)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--offline-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    if force_root:
        parser.add_argument("--force-root", action="store_true",
                            help="run even as root over a collection owned by another user")
    return parser


def _refuse_root(ctx: Context) -> None:
    """Refuse root over a non-root collection: root-owned files would lock its owner out."""
    if os.geteuid() != 0 or getattr(ctx.args, "force_root", True):
        return
    try:
        owner = os.stat(os.path.join(ctx.base_dir, "qubes.xml")).st_uid
    except OSError:
        return
    if owner != 0:
        raise QubesError(
            "*** Running this tool as root is strongly discouraged, this will lead you in "
            "permissions problems.\nRetry as unprivileged user.\n"
            "... or use --force-root to continue anyway.")


def _on_sigterm(signum, _frame):
    raise Terminated(signum)


def run(parser: argparse.ArgumentParser, handler: Callable[[Context], int | None],
        argv: list[str] | None = None,
        validate: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
        ) -> int:
    """Parse, run `handler`, and map every outcome to an exit code.

    `validate(parser, args)` may check argument combinations and call
    `parser.error()` (usage error, exit 2) before anything is opened.
    """
    raw = sys.argv[1:] if argv is None else list(argv)
    # Options may follow VM names; argparse's intermixed mode mishandles "--", though.
    args = parser.parse_args(raw) if "--" in raw else parser.parse_intermixed_args(raw)
    if validate is not None:
        validate(parser, args)
    if getattr(args, "offline_mode", False):
        os.environ["QUBES_OFFLINE"] = "1"
    ctx = Context(args)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeTextStream(sys.stdout), SafeTextStream(sys.stderr)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_hup = signal.signal(signal.SIGHUP, _on_sigterm)
    try:
        _refuse_root(ctx)
        code = handler(ctx)
        return int(code or ExitCode.OK)
    except UsageError as exc:
        parser.error(str(exc))
    except QubesError as exc:
        print(f"ERROR: {exc}{_notes(exc)}", file=sys.stderr)
        return int(ExitCode.ERROR)
    except KeyboardInterrupt as exc:
        print(f"ERROR: interrupted{_notes(exc)}", file=sys.stderr)
        return int(ExitCode.SIGNAL_BASE) + signal.SIGINT
    except Terminated as exc:
        print(f"ERROR: terminated{_notes(exc)}", file=sys.stderr)
        return int(ExitCode.SIGNAL_BASE) + exc.signum
    except BrokenPipeError:
        sys.stderr.close()
        return int(ExitCode.ERROR)
    except Exception as exc:  # noqa: BLE001 - the funnel for unexpected errors
        if args.debug:
            traceback.print_exc()
        else:
            print(f"ERROR: internal error: {type(exc).__name__}: {exc} "
                  "(run with --debug for details)", file=sys.stderr)
        return int(ExitCode.ERROR)
    finally:
        sys.stdout, sys.stderr = streams
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        if ctx._hypervisor is not None:
            ctx._hypervisor.close()
