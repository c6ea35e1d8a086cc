"""qvm-run: run a shell command in a running VM (our guest channel, not qrexec).

With -p the command gets our standard input (read to its end first, unless
it is a terminal or --no-stdin is given), its output is printed and its exit
code becomes ours. Without -p stdin is never read, the output is dropped and
only failure is reported.
"""
from __future__ import annotations

import sys

from qubes.errors import QubesError
from qubes.ops import agent
from qubes.ops.domain import agent_socket
from qubes.ops.lifecycle import start_vm
from qubes.tools import _cli
from qubes.vmm.base import DomainState


def build_parser():
    p = _cli.make_parser("qvm-run", "Run a command in a VM.")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-a", "--auto", action="store_true", help="start the VM if it is halted")
    p.add_argument("-p", "--pass-io", action="store_true",
                   help="send our stdin to the command (read to its end first; at most "
                        f"{agent.MAX_INPUT // 1024} KiB), print its output and exit with its "
                        "exit code")
    p.add_argument("--no-stdin", action="store_true",
                   help="with -p: output only, stdin is not read (for loops reading stdin)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long the command may run (default 60)")
    p.add_argument("name", metavar="VM")
    p.add_argument("command", metavar="COMMAND")
    return p


def _input(args) -> bytes | None:
    """What -p sends: stdin to its end, never a terminal's (nobody would end it)."""
    if not args.pass_io or args.no_stdin or sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read(agent.MAX_INPUT + 1)
    if len(data) > agent.MAX_INPUT:
        raise QubesError(f"standard input is larger than {agent.MAX_INPUT} bytes, the most "
                         "qvm-run passes to a VM")
    return data


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        with ctx.read() as app:
            vm = _cli.vm_by_name(app, a.name)
            if not vm.HAS_KERNEL or vm.is_adminvm:
                raise QubesError(f"VM '{a.name}' has no command channel")
        state = ctx.hypervisor.domain_states([a.name])[a.name].state
        if state is DomainState.HALTED:
            if not a.auto:
                raise QubesError(f"VM '{a.name}' is not running")
            start_vm(ctx.base_dir, ctx.host, ctx.hypervisor, a.name)
        elif state is DomainState.PAUSED:
            raise QubesError(f"VM '{a.name}' is paused")
        code, output = agent.run_command(agent_socket(ctx.base_dir, a.name), a.name,
                                         a.command, a.timeout, stdin=_input(a))
        if a.pass_io:
            sys.stdout.buffer.write(output)
            sys.stdout.flush()
        elif code != 0 and not a.quiet:
            ctx.warn(f"{a.name}: command failed with code {code}")
        return code
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
