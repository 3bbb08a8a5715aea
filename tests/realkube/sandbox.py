"""One pod's sandbox, for the kubelet player: what the pause container and the runtime give a pod.

``python -m tests.realkube.sandbox SPEC_JSON`` runs one container command in

- its own **mount namespace**: each volume directory (written by the player, kubelet-style) is
  bind-mounted at the ``mountPath`` the Pod template names (read-only where it says so), missing
  parents are made on an overlay, so nothing is created on the host; then the root filesystem is
  remounted read-only, as ``readOnlyRootFilesystem: true`` asks;
- its own **network namespace** with only ``lo`` up, so every pod listens on its own
  ``containerPort`` (8080 for all receivers) like pods with their own IPs. Each containerPort is
  reachable from the host on a loopback port this process prints (what ``kubectl port-forward``
  does), and each "host service" port (PostgreSQL) is reachable inside the pod at
  ``127.0.0.1:<same port>``, relayed to the host's loopback (what a Service would route to);
- as the pod's ``runAsUser``/``runAsGroup`` when run as root.

As root the namespaces are made directly. Otherwise an unprivileged user namespace is made first
(the user is root inside it, mapped to itself outside), which Linux allows unless
``user.max_user_namespaces`` is 0 or a security module forbids it; ``runAsUser`` cannot be honoured
there (only the own uid is mapped), so the command runs as the calling user.

Prints one JSON line ``{"ports": {"<containerPort>": <hostPort>}}`` once the command is started,
then relays until SIGTERM, which it passes on to the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _enter_namespaces() -> None:
    """A private mount and network namespace (inside a user namespace when not root)."""
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    else:
        uid, gid = os.geteuid(), os.getegid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare (user ns)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing leaks back to the host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _mount_volumes(mounts: list[dict[str, Any]], scratch: Path, read_only_root: bool) -> None:
    """Bind each volume directory at its mountPath; parents the host lacks go on an overlay.

    Sources are opened first and bound through /proc/self/fd: a mount over /tmp (an emptyDir)
    must not hide the volume directories the player wrote under the host's /tmp."""
    sources = [os.open(m["source"], os.O_PATH | os.O_DIRECTORY) for m in mounts]
    overlaid: set[str] = set()
    for mount in mounts:
        target = Path(mount["target"])
        if target.exists():
            continue
        existing = next(p for p in target.parents if p.exists() or str(p) in overlaid)
        if str(existing) not in overlaid:
            upper = Path(tempfile.mkdtemp(dir=scratch))
            (upper / "u").mkdir()
            (upper / "w").mkdir()
            options = f"lowerdir={existing},upperdir={upper / 'u'},workdir={upper / 'w'}"
            _mount("overlay", str(existing), "overlay", 0, options)
            overlaid.add(str(existing))
        target.mkdir(parents=True, exist_ok=True)
    for fd, mount in sorted(zip(sources, mounts, strict=True), key=lambda m: len(m[1]["target"])):
        target = mount["target"]
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND, None)
        if mount.get("readOnly"):
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        os.close(fd)
    if read_only_root:  # the overlays are part of the root filesystem; then the root itself
        for path in [*overlaid, "/"]:
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def _splice(a: socket.socket, b: socket.socket) -> None:
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    await asyncio.gather(_pipe(ra, wb), _pipe(rb, wa))


async def _relay(
    inbound: dict[int, socket.socket], services: list[int], agent: socket.socket
) -> None:
    """containerPort <- host listener; 127.0.0.1:service (pod) -> the host's, via the agent."""
    loop = asyncio.get_running_loop()
    ask = asyncio.Lock()
    connections: set[asyncio.Task[None]] = set()

    async def serve_inbound(port: int, listener: socket.socket) -> None:
        while True:
            client, _ = await loop.sock_accept(listener)
            pod_side = socket.socket()  # created here: in the pod's network namespace
            pod_side.setblocking(False)
            try:
                await loop.sock_connect(pod_side, ("127.0.0.1", port))
            except OSError:
                client.close()
                pod_side.close()
                continue
            task = asyncio.create_task(_splice(client, pod_side))
            connections.add(task)
            task.add_done_callback(connections.discard)

    async def serve_service(port: int) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with ask:
                await loop.sock_sendall(agent, str(port).encode())
                _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, agent, 16, 1)
            if not fds:
                writer.close()
                return
            host_side = socket.socket(fileno=fds[0])
            host_side.setblocking(False)
            rb, wb = await asyncio.open_connection(sock=host_side)
            await asyncio.gather(_pipe(reader, wb), _pipe(rb, writer))

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        await server.serve_forever()

    listeners = [serve_inbound(port, sock) for port, sock in inbound.items()]
    await asyncio.gather(*listeners, *(serve_service(p) for p in services))


def _agent(channel: socket.socket) -> None:
    """Stays in the host's namespaces: connects to a host loopback port on request and hands
    the connected socket over (SCM_RIGHTS)."""
    _die_with_parent()
    while request := channel.recv(16):
        try:
            conn = socket.create_connection(("127.0.0.1", int(request)), timeout=10)
        except OSError:
            socket.send_fds(channel, [b"x"], [])
            continue
        socket.send_fds(channel, [b"ok"], [conn.fileno()])
        conn.close()
    os._exit(0)


def main() -> None:
    spec = json.loads(sys.argv[1])
    _die_with_parent()
    log = open(spec["log"], "ab")  # noqa: SIM115 - the command's stdout, for as long as it runs
    scratch = Path(spec["scratch"])
    inbound: dict[int, socket.socket] = {}
    for port in spec.get("ports", []):
        listener = socket.socket()  # created before unshare: in the host's network namespace
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        inbound[int(port)] = listener
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.fork() == 0:
        ours.close()
        _agent(theirs)
    theirs.close()

    started_as_root = os.geteuid() == 0
    _enter_namespaces()
    _mount_volumes(spec["mounts"], scratch, bool(spec.get("readOnlyRootFilesystem")))

    uid, gid = spec.get("uid"), spec.get("gid")

    def become_the_container_user() -> None:
        if started_as_root and uid is not None:
            os.setgroups([])
            os.setgid(gid if gid is not None else uid)
            os.setuid(uid)
        _die_with_parent()

    proc = subprocess.Popen(
        spec["command"],
        env=spec["env"],
        cwd=spec.get("workingDir") or "/",
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=become_the_container_user,  # the agent is a process, not a thread
    )
    log.close()
    ports = {str(port): sock.getsockname()[1] for port, sock in inbound.items()}
    print(json.dumps({"ports": ports, "pid": proc.pid}), flush=True)

    def stop(*_: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)

    async def run() -> int:
        relay = asyncio.create_task(_relay(inbound, spec.get("services", []), ours))
        code = await asyncio.to_thread(proc.wait)
        relay.cancel()
        return code

    code = asyncio.run(run())
    print(json.dumps({"exit": code}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
