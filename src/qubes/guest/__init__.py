"""Files that run inside a guest: the tiny template's two init stages.

Data only; nothing here is imported by the core. `ops.template_build` packs
`initramfs-init` into the kernel's initramfs, `qubes-init` and `qubes-net`
into the template's root filesystem.

Guest protocol (ours, as small as a test needs):
- kernel command line: `qubes.name=NAME qubes.services=a,b` (services enabled
  for this VM, comma-separated), `qubes.if=MAC,ADDRESS,GATEWAY` per interface
  (`qubes-net` applies one; the host also runs it when it re-plugs a VM),
  `qubes.netvm=1` on VMs that forward for clients;
- first serial port (console.log): `QUBES-READY NAME` once the disks are
  mounted and the services started;
- second serial port (agent.sock): the host sends `NONCE BASE64-COMMAND
  [BASE64-STDIN]` lines; the guest runs the command with that input (or an
  empty one) and answers with its output, base64-encoded, then
  `NONCE EXIT-CODE`.
"""
