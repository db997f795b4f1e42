"""The sandbox's worker process (standard library only; run as ``python -I sandbox_worker.py``
by :mod:`puma_mdm.sandbox`, never imported).

Reads one JSON request from stdin: ``{"programs": [...], "entry": "solution", "timeout": s,
"memory": bytes, "file_size": bytes, "root": dir, "seccomp": [hex BPF, ...]}``. Runs each
program in a child forked for it and writes one JSON line per program to stdout:
``{"i": i, "value": number}`` or ``{"i": i, "error": "..."}``.

The OS isolation around this process (namespaces, user, the sandbox-wide seccomp filter) is set
up by :mod:`puma_mdm.sandbox`, which also states the threat model. Here, per child, before any
generated code runs: stdin/stdout/stderr on /dev/null; limits on CPU seconds, address space, file
size, processes, open files and core dumps; ``no_new_privs`` and the per-program seccomp filters
(no exec, no process creation, no signals); a wall-clock timeout after which the child is
killed; and, as a second layer only, an audit hook (PEP 578) that refuses sockets, new
processes, signals, ctypes, and any write, rename or removal outside ``root``.
"""

import json
import math
import os
import resource
import select
import signal
import sys
import time

BLOCKED_EVENTS = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "pty.",
    "ctypes.",
    "gc.get_",
    "sys.addaudithook",
)
PATH_EVENTS = {  # event → argument positions holding paths that get written or changed
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def load_seccomp(programs: list) -> None:
    """Install seccomp BPF programs (raw ``struct sock_filter`` arrays, as hex) on this process."""
    if not programs:
        return
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    for text in programs:
        code = ctypes.create_string_buffer(bytes.fromhex(text))
        prog = SockFprog(len(code.raw) // 8, ctypes.addressof(code))
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def make_audit_hook(root: str):
    root = os.path.realpath(root)

    def inside(path) -> bool:
        if isinstance(path, int):  # an open descriptor: only /dev/null and the result pipe
            return True
        full = os.path.realpath(os.fsdecode(path))
        return full == root or full.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(BLOCKED_EVENTS):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} is not allowed")

    return hook


def confine(request: dict) -> None:
    """Limits and the audit hook, applied in the child before any generated code runs."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    cpu = math.ceil(request["timeout"]) + 1
    limits = {
        resource.RLIMIT_CPU: cpu,
        resource.RLIMIT_AS: request["memory"],
        resource.RLIMIT_FSIZE: request["file_size"],
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_NPROC: 1,
        resource.RLIMIT_CORE: 0,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))
    load_seccomp(request["seccomp"])
    sys.addaudithook(make_audit_hook(request["root"]))


def result_of(value, entry: str) -> dict:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {"error": f"{entry}() returned {type(value).__name__}, not a number"}
    if isinstance(value, int) and abs(value) > 2**53:
        value = float(value)
    return {"value": value}


def execute(code: str, entry: str) -> dict:
    namespace = {"__name__": "__sandbox__"}
    try:
        exec(compile(code, "<program>", "exec"), namespace)
        fn = namespace.get(entry)
        if not callable(fn):
            return {"error": f"the program defines no {entry}() function"}
        return result_of(fn(), entry)
    except BaseException as err:  # anything the program does wrong is its result
        return {"error": f"{type(err).__name__}: {err}"[:300]}


def run_one(code: str, request: dict) -> dict:
    """Fork a child for one program; kill it after the timeout."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            confine(request)
            outcome = execute(code, request["entry"])
            data = json.dumps(outcome)
        except BaseException as err:
            data = json.dumps({"error": f"sandbox setup failed: {err}"})
        os.write(write_end, data.encode()[:4096])
        os._exit(0)
    os.close(write_end)
    chunks, timed_out = [], False
    deadline = time.monotonic() + request["timeout"]
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return {"error": f"timeout: still running after {request['timeout']} s"}
    if not chunks:
        if os.WIFSIGNALED(status):
            return {"error": f"killed by {signal.Signals(os.WTERMSIG(status)).name}"}
        return {"error": "the program ended the process without a result"}
    try:
        return json.loads(b"".join(chunks))
    except json.JSONDecodeError:
        return {"error": "the program corrupted its result channel"}


def main() -> None:
    request = json.loads(sys.stdin.read())
    for i, code in enumerate(request["programs"]):
        print(json.dumps({"i": i, **run_one(code, request)}), flush=True)


if __name__ == "__main__":
    main()
