"""One pod's sandbox, for the kubelet player: what the pause container and the runtime give a pod.

``python -m tests.realkube.sandbox SPEC_JSON`` runs one container command in

- its own **mount namespace** and root: a tmpfs holding a recursive bind of each of the host's
  top-level directories (the host's tree is the image: this checkout, its Python, PostgreSQL's
  binaries keep their paths) and a private ``/dev`` (device nodes bound from the host's,
  ``/dev/shm``), chrooted into. Each volume directory (written by the player, kubelet-style) is
  bind-mounted at the ``mountPath`` the Pod names (read-only where it says so), and each file
  mount (the container's termination message file) at its path; a mountPath the host lacks is made
  in the new root's tmpfs, or on an overlay of its nearest existing directory, so nothing is
  created on the host. Then the root filesystem is made read-only, as ``readOnlyRootFilesystem:
  true`` asks (the host's directories included; ``/dev``, ``/proc``, ``/sys`` and the volumes
  stay as they are);
- its own **network namespace** with only ``lo`` up, so every pod listens on its own
  ``containerPort`` (8080 for all receivers) like pods with their own IPs. Each containerPort is
  reachable from the host on a loopback port this process prints (what ``kubectl port-forward``
  does), and each "host service" port (PostgreSQL) is reachable inside the pod at
  ``127.0.0.1:<same port>``, relayed to the host's loopback (what a Service would route to);
- its own **PID namespace**, whose PID 1 is the command, as in a container: when the command
  ends, however it ends (killed with the sandbox included), the kernel ends every process it
  started (a receiver's worker processes), so nothing outlives the pod. As a container's PID 1,
  the command ignores a signal it has no handler for (SIGTERM included). A small process of
  the sandbox's stands between them (a process that made a PID namespace cannot start threads,
  and the relay needs them): it passes SIGTERM on and ends as the command did;
- as the pod's ``runAsUser``/``runAsGroup`` when run as root.

As root the namespaces are made directly. Otherwise an unprivileged user namespace is made first
(the user is root inside it, mapped to itself outside), which Linux allows unless
``user.max_user_namespaces`` is 0 or a security module forbids it; ``runAsUser`` cannot be honoured
there (only the own uid is mapped), so the command runs as the calling user.

Prints one JSON line ``{"ports": {"<containerPort>": <hostPort>}, "pid": <pid>}`` once the command
is started, relays until the command exits (SIGTERM is passed on to it), then prints
``{"exit": <code>}`` (a negative code: killed by that signal) and exits 0.
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
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# statvfs flag -> the mount flag a remount must repeat.
_KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
# The device nodes a container runtime puts in a container's /dev.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

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


def _remount_read_only(path: str) -> None:
    """Make one mount read-only, keeping its nosuid/nodev/noexec and atime flags (inside a user
    namespace the kernel refuses a remount that would drop them)."""
    kept = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_flag, ms_flag in _KEPT_FLAGS:
        if kept & st_flag:
            flags |= ms_flag
    _mount(None, path, None, flags, None)


def _make_mountpoint(target: Path, is_file: bool) -> None:
    if is_file:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)


def _container_root(scratch: Path) -> list[str]:
    """What a container runtime gives a pod, with the host's tree as the image: a new root (a
    tmpfs) holding a recursive bind of each of the host's top-level directories (the same paths:
    the checkout, its Python, PostgreSQL's binaries), a private ``/dev`` (a tmpfs with the usual
    device nodes bound from the host's, ``/dev/shm``, the ``/proc/self/fd`` links), then a chroot
    into it. Returns the host directories bound (remounted read-only for a read-only root).

    A new root, rather than the host's: a volume's ``mountPath`` may be a directory the host
    lacks (``/backups``) and a termination message a file the host must not get
    (``/dev/termination-log``); both are made in the new root's own tmpfs, never on the host."""
    devices = {}
    for name in DEVICES:
        with contextlib.suppress(OSError):
            devices[name] = os.open(f"/dev/{name}", os.O_PATH)
    root = scratch / "rootfs"
    root.mkdir()
    _mount("tmpfs", str(root), "tmpfs", 0, "mode=755")
    # The host directory holding the new root first: its recursive bind then copies the new
    # root's (still empty) tmpfs, which is unmounted from the copy at once.
    entries = sorted(os.scandir("/"), key=lambda e: not root.is_relative_to(e.path))
    bound = []
    for entry in entries:
        if entry.name in ("dev", ".", ".."):
            continue
        target = root / entry.name
        if entry.is_symlink():
            target.symlink_to(os.readlink(entry.path))
        elif entry.is_dir():
            target.mkdir()
            _mount(entry.path, str(target), None, MS_BIND | MS_REC, None)
            if root.is_relative_to(entry.path):
                _check(_libc.umount2(str(target / root.relative_to(entry.path)).encode(),
                                     MNT_DETACH), "umount the new root's copy")  # fmt: skip
            if entry.name not in ("proc", "sys"):
                bound.append(f"/{entry.name}")
        elif entry.is_file():
            target.touch()
            _mount(entry.path, str(target), None, MS_BIND, None)
    dev = root / "dev"
    dev.mkdir()
    _mount("tmpfs", str(dev), "tmpfs", MS_NOSUID, "mode=755")
    for name, fd in devices.items():
        (dev / name).touch()
        _mount(f"/proc/self/fd/{fd}", str(dev / name), None, MS_BIND, None)
        os.close(fd)
    for name, link in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                       ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        (dev / name).symlink_to(link)
    (dev / "shm").mkdir()
    _mount("tmpfs", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.chroot(root)
    os.chdir("/")
    return bound


def _mount_volumes(
    mounts: list[dict[str, Any]],
    sources: list[int],
    scratch: Path,
    read_only: list[str] | None,
) -> None:
    """Bind each volume (a directory, or a file such as the termination message) at its
    mountPath. ``read_only``: the host directories to make read-only with the root (None: the
    root stays writable); that happens once the mountpoints are made, before the volumes are
    mounted over them.

    A missing mountPath is made where it does no harm: in the new root's tmpfs (``/backups``),
    in ``/dev``, inside a volume mounted above it, or else on an overlay of its nearest existing
    directory (``/etc`` for ``/etc/dfm/config``), so nothing is created on the host. Sources are
    opened before anything is mounted and bound through /proc/self/fd: a mount over /tmp (an
    emptyDir) must not hide the volume directories the player wrote under the host's /tmp."""
    targets = [Path(m["target"]) for m in mounts]
    overlaid: list[str] = []

    def inside_volume(path: Path) -> bool:
        return any(path != t and path.is_relative_to(t) for t in targets)

    def private(path: Path) -> bool:
        """On a filesystem of this sandbox's own (where a mountpoint may be made)."""
        return (
            path == Path("/")
            or path.is_relative_to("/dev")
            or any(path.is_relative_to(o) for o in overlaid)
        )

    order = sorted(range(len(mounts)), key=lambda i: len(mounts[i]["target"]))
    for i in order:
        target = targets[i]
        if target.exists() or inside_volume(target):
            continue  # one inside a volume is made once that volume is mounted
        existing = next(p for p in target.parents if p.exists())
        if not private(existing):
            upper = Path(tempfile.mkdtemp(dir=scratch))
            (upper / "u").mkdir()
            (upper / "w").mkdir()
            options = f"lowerdir={existing},upperdir={upper / 'u'},workdir={upper / 'w'}"
            _mount("overlay", str(existing), "overlay", 0, options)
            overlaid.append(str(existing))
        _make_mountpoint(target, bool(mounts[i].get("file")))
    if read_only is not None:  # the new root, the host's trees, the overlays
        for path in ["/", *read_only, *overlaid]:
            _remount_read_only(path)
    for i in order:
        target, mount = targets[i], mounts[i]
        if not target.exists():
            _make_mountpoint(target, bool(mount.get("file")))
        _mount(f"/proc/self/fd/{sources[i]}", str(target), None, MS_BIND, None)
        if mount.get("readOnly"):
            _remount_read_only(str(target))
        os.close(sources[i])


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


def _image_under_volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The image (this checkout, its Python) stays visible where a volume would hide it: a
    checkout cloned under /tmp meets a Pod's emptyDir at /tmp. Such a path is bound again, over
    the volume, at its own path (read-only with a read-only root)."""
    volumes = [Path(m["target"]) for m in spec["mounts"]]
    image = {Path(__file__).resolve().parents[2], Path(sys.prefix), Path(sys.base_prefix)}
    return [
        {
            "source": str(path),
            "target": str(path),
            "readOnly": bool(spec.get("readOnlyRootFilesystem")),
        }
        for path in sorted(image)
        if any(path != v and path.is_relative_to(v) for v in volumes)
    ]


def _pid_namespace(spec: dict[str, Any], log: Any, preexec: Any) -> None:
    """The forked process between the sandbox and the command: makes the PID namespace, runs
    the command as its PID 1, passes SIGTERM on, and ends as the command ended (its exit code,
    or killed by the same signal)."""
    code = 1
    try:
        _die_with_parent()
        _check(_libc.unshare(CLONE_NEWPID), "unshare (pid ns)")
        # The handler is in place before the command starts: a SIGTERM that comes while it is
        # being started is passed on once it has (exec resets the handler in the command).
        started: list[subprocess.Popen[bytes]] = []
        pending: list[bool] = []

        def stop(*_: Any) -> None:
            if not started:
                pending.append(True)
                return
            with contextlib.suppress(ProcessLookupError):
                started[0].send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        proc = subprocess.Popen(
            spec["command"],
            env=spec["env"],
            cwd=spec.get("workingDir") or "/",
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,  # the agent and this are processes, not threads
        )
        log.close()
        started.append(proc)
        if pending:
            stop()
        code = proc.wait()
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            print(f"the pod's PID namespace: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        os._exit(code & 0xFF if code >= 0 else 1)


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
    mounts = spec["mounts"] + _image_under_volumes(spec)
    _enter_namespaces()
    # Opened in the new mount namespace (a bind's source must be one of its mounts), before the
    # new root and the volumes hide the host's paths.
    sources = [
        os.open(m["source"], os.O_PATH | (0 if m.get("file") else os.O_DIRECTORY)) for m in mounts
    ]
    bound = _container_root(scratch)
    _mount_volumes(mounts, sources, scratch, bound if spec.get("readOnlyRootFilesystem") else None)

    uid, gid = spec.get("uid"), spec.get("gid")

    def become_the_container_user() -> None:
        if started_as_root and uid is not None:
            os.setgroups([])
            os.setgid(gid if gid is not None else uid)
            os.setuid(uid)
        _die_with_parent()

    sys.stdout.flush()
    init = os.fork()  # still one thread here: the relay's start below
    if init == 0:
        _pid_namespace(spec, log, become_the_container_user)
    log.close()
    ports = {str(port): sock.getsockname()[1] for port, sock in inbound.items()}
    print(json.dumps({"ports": ports, "pid": init}), flush=True)

    def stop(*_: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)

    async def run() -> int:
        relay = asyncio.create_task(_relay(inbound, spec.get("services", []), ours))
        _, status = await asyncio.to_thread(os.waitpid, init, 0)
        relay.cancel()
        return os.waitstatus_to_exitcode(status)

    code = asyncio.run(run())
    print(json.dumps({"exit": code}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
