"""Run untrusted Python programs (a model's generated code) and collect the number each returns.

Threat model. A generated program is hostile and runs with the full power of Python: it may try
to write, rename or delete files anywhere (by path, through ``dir_fd``, through objects whose path
changes between a check and the call), create FIFOs and devices, start processes or daemons by
any route (``os.system``, ``_posixsubprocess.fork_exec``, ``os.fork``, threads), signal or trace
other processes, open network connections, exhaust memory, CPU, disk or process slots, and switch
off any guard that lives inside the interpreter. It must not be able to change anything outside
its scratch directory, see the caller's files or environment, reach the network, affect other
processes, or outlive :func:`run_programs`. The **operating system** enforces this, not Python:

* **Namespaces** (bubblewrap, ``bwrap``): new mount, PID, network, IPC, UTS and cgroup
  namespaces. The root file system is empty except read-only binds of ``/usr`` (with its ``/bin``
  and ``/lib`` links), the interpreter's prefix and the worker script, a private ``/proc`` and a
  minimal ``/dev``; the only writable place is ``/sandbox``, a tmpfs capped at
  ``Limits.scratch_mb`` that vanishes with the sandbox (nothing is written to the host's disk).
  The network namespace has only a down loopback. The PID namespace dies with its first process,
  so every process started inside is killed when the call ends or times out (``--die-with-parent``
  also when the caller dies).
* **A separate unprivileged user**: started as root, the sandbox drops to uid/gid 65534
  (``nobody``) with no supplementary groups and empty capability sets (``setpriv``); started as
  another user, it runs as that uid mapped into a user namespace with no capabilities.
  ``no_new_privs`` is set either way.
* **Seccomp** (filters compiled by libseccomp through ``pyseccomp``): for the whole sandbox no
  sockets, ptrace or cross-process memory access, mount/namespace/keyring/bpf/perf/io_uring
  calls, ``mknod``/``mkfifo``, extended attributes, ``pidfd_*``, new user namespaces, or
  administrative calls; in each program's process also no ``execve``, no process creation
  (``fork``/``vfork``/``clone`` of a process; ``clone3`` reports ENOSYS), and no signals
  (``kill``/``tgkill``/``tkill``/``sigqueue``).
* **Resource limits** per program: CPU seconds, address space, file size, number of processes
  (``RLIMIT_NPROC`` 1: no threads or processes), open files, no core dumps; a wall-clock timeout
  after which the program's process is killed.
* Second layer only: an audit hook (PEP 578) in the worker refuses the same operations early with
  a readable error. It is not a security boundary.

Not guaranteed: files under ``/usr`` and the interpreter's prefix are readable (they are the
host's world-readable system files); the programs of one call share the worker and its scratch
directory, so a program can spoil the results of later programs in the same call (not the
caller's); the sandbox shares the host's kernel (kernel bugs, side channels and CPU contention are
out of scope); the total memory of the scratch tmpfs counts against the host, bounded by
``scratch_mb``.

Where the OS cannot provide this (no ``bwrap``, no ``libseccomp``, or neither root nor
unprivileged user namespaces), :func:`run_programs` raises :class:`SandboxUnavailable` with one
line saying how to fix it, unless the user opts in to the weak sandbox by setting the environment
variable ``PUMA_ALLOW_WEAK_SANDBOX=1``: then the worker runs as the caller in a host temporary
directory with only the seccomp filters (when libseccomp is there), the resource limits and the
audit hook — enough against accidents, not against an adversary.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from puma_mdm.errors import PumaError

WORKER = Path(__file__).with_name("sandbox_worker.py")
WEAK_ENV = "PUMA_ALLOW_WEAK_SANDBOX"
SANDBOX_UID = 65534  # nobody
SCRATCH = "/sandbox"  # the writable tmpfs inside the sandbox
CLONE_THREAD = 0x00010000
CLONE_NEWUSER = 0x10000000

# denied (EPERM) for everything in the sandbox, the worker included
DENIED_EVERYWHERE = (
    "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree",
    "fsopen", "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "mknod", "mknodat", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_by_handle_at", "name_to_handle_at", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "kcmp", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "sethostname",
    "setdomainname", "syslog", "clock_settime", "settimeofday", "adjtimex", "clock_adjtime",
    "iopl", "ioperm", "fanotify_init", "lookup_dcookie", "vhangup",
)  # fmt: skip
# denied in addition inside each program's process
DENIED_IN_PROGRAMS = (
    "execve", "execveat", "fork", "vfork", "kill", "tkill", "tgkill", "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
)  # fmt: skip


class SandboxUnavailable(PumaError):
    """The OS cannot isolate generated programs here (and the weak sandbox was not allowed)."""


@dataclass(frozen=True)
class Outcome:
    """What a program's entry function returned: a number, or why there is none."""

    value: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Limits:
    """Per program: wall-clock ``timeout`` (s), address space and largest file written (MB);
    per call: the size of the scratch directory (MB)."""

    timeout: float = 2.0
    memory_mb: int = 512
    file_size_mb: int = 1
    scratch_mb: int = 64


def _compile(names: Sequence[str], everywhere: bool) -> bytes:
    """A seccomp BPF program that allows everything but ``names`` (and, ``everywhere``: new user
    namespaces, ``clone3``; else: ``clone`` of a process), as raw ``struct sock_filter`` bytes."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    for name in names:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    if everywhere:
        f.add_rule(
            sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        )
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # glibc falls back to clone
    else:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


@functools.cache
def _filters() -> tuple[bytes, bytes] | str:
    """(whole sandbox, per program) seccomp programs, or why they cannot be built."""
    try:
        return _compile(DENIED_EVERYWHERE, True), _compile(DENIED_IN_PROGRAMS, False)
    except Exception as err:  # no pyseccomp, no libseccomp.so, an unknown architecture
        return f"seccomp filters unavailable ({type(err).__name__}: {err})"


def _environment(home: str) -> dict[str, str]:
    """Only what an interpreter needs: no proxies, tokens or paths of the host's user."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
    }


def _bwrap_command(bwrap: str, scratch_mb: int, seccomp_fd: int, argv: list[str]) -> list[str]:
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    cmd += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--ro-bind", str(WORKER), "/worker.py", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--perms", "1777", "--size", str(scratch_mb << 20), "--tmpfs", SCRATCH]
    cmd += ["--chdir", SCRATCH, "--seccomp", str(seccomp_fd)]
    if os.geteuid() == 0:  # a real, separate unprivileged user
        cmd += ["--", "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}"]
        cmd += ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    else:  # the caller's uid in a user namespace, without capabilities
        cmd += ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID)]
        cmd += ["--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
    return [*cmd, "--", os.path.realpath(sys.executable), "-I", *argv]


def _spawn(argv: list[str], scratch_mb: int, outer: bytes) -> subprocess.Popen:
    """Start ``python -I argv`` in the OS sandbox, stdin/stdout piped."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise FileNotFoundError("bwrap")
    with tempfile.TemporaryFile() as rules:
        rules.write(outer)
        rules.seek(0)
        return subprocess.Popen(
            _bwrap_command(bwrap, scratch_mb, rules.fileno(), argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(SCRATCH),
            pass_fds=(rules.fileno(),),
            start_new_session=True,
            text=True,
        )


@functools.cache
def isolation_problem() -> str | None:
    """Why this machine cannot run the OS sandbox, or None when it can (probed once)."""
    filters = _filters()
    if isinstance(filters, str):
        return filters
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        proc = _spawn(["-c", "print('ok')"], 1, filters[0])
        out, err = proc.communicate(timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not start ({error})"
    if out.strip() != "ok":
        lines = (err or "").strip().splitlines() or [f"exit status {proc.returncode}"]
        return f"bubblewrap cannot create its namespaces here ({lines[-1]})"
    return None


def weak_sandbox_allowed() -> bool:
    """The user's explicit opt-in to run generated code without OS isolation."""
    return os.environ.get(WEAK_ENV, "") == "1"


def run_programs(
    programs: Sequence[str], entry: str = "solution", limits: Limits = Limits()
) -> list[Outcome]:
    """Execute each program in the sandbox and call its ``entry()``; one :class:`Outcome` per
    program, in order. Raises :class:`SandboxUnavailable` where the OS cannot isolate them."""
    if not programs:
        return []
    problem = isolation_problem()
    if problem is not None and not weak_sandbox_allowed():
        raise SandboxUnavailable(
            f"cannot run generated programs in an OS sandbox: {problem}; install bubblewrap and "
            "libseccomp (`make setup` does) and run as root or allow unprivileged user namespaces "
            f"(sysctl kernel.unprivileged_userns_clone=1), or set {WEAK_ENV}=1 to accept the "
            "weak in-process sandbox"
        )
    filters = _filters()
    request = {
        "programs": list(programs),
        "entry": entry,
        "timeout": limits.timeout,
        "memory": limits.memory_mb << 20,
        "file_size": limits.file_size_mb << 20,
        "seccomp": [] if isinstance(filters, str) else [f.hex() for f in filters[1:]],
    }
    # each program is killed after its timeout; the slack covers forks and start-up
    deadline = len(programs) * (limits.timeout + 0.5) + 30
    if problem is None:
        proc = _spawn(["/worker.py"], limits.scratch_mb, filters[0])
        out = _exchange(proc, {**request, "root": SCRATCH}, deadline)
    else:
        # the weak sandbox: both filters are loaded in each program's process
        weak = [] if isinstance(filters, str) else [f.hex() for f in filters]
        with tempfile.TemporaryDirectory(prefix="puma-sandbox-") as root:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=root,
                env=_environment(root),
                start_new_session=True,
                text=True,
            )
            out = _exchange(proc, {**request, "root": root, "seccomp": weak}, deadline)
    found: dict[int, Outcome] = {}
    for line in out.splitlines():
        try:
            record = json.loads(line)
            found[int(record["i"])] = Outcome(record.get("value"), record.get("error"))
        except (ValueError, KeyError, TypeError):
            break  # the worker's channel was spoiled; the rest count as lost
    lost = Outcome(error="the sandbox worker stopped before running this program")
    return [found.get(i, lost) for i in range(len(programs))]


def _exchange(proc: subprocess.Popen, request: dict, deadline: float) -> str:
    """Send the request, read the results; kill the whole sandbox after ``deadline`` seconds."""
    try:
        out, _ = proc.communicate(json.dumps(request), timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out
