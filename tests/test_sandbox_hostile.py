"""Hostile programs against the OS sandbox, one group per escape class. Every program first
switches off the worker's audit hook (the second layer), so what is tested is the isolation the
operating system enforces; each attack is then checked on the host's disk or process table."""

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from puma_mdm import sandbox
from puma_mdm.sandbox import Limits, SandboxUnavailable, isolation_problem, run_programs

FAST = Limits(timeout=1.5)
# turns the audit hook into a no-op: the attack of issue 19 plus a patched realpath
DISARM = """import os, sys, posixpath
_main = sys.modules['__main__']
_main.BLOCKED_EVENTS = ()
_main.PATH_EVENTS.clear()
_main.WRITE_FLAGS = 0
posixpath.realpath = os.path.realpath = lambda p, *a, **k: os.getcwd()
"""

pytestmark = pytest.mark.skipif(
    isolation_problem() is not None, reason=f"no OS sandbox here: {isolation_problem()}"
)


def hostile(body: str) -> str:
    lines = "".join(f"    {line}\n" for line in body.splitlines())
    return f"{DISARM}\ndef solution():\n{lines}    return 1\n"


def marker() -> str:
    return f"puma-escape-{uuid.uuid4().hex}"


def processes_with(text: str) -> list[int]:
    """PIDs on the host whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def visible_dir() -> Path:
    """A host directory the sandbox can see (read-only): the interpreter's prefix."""
    return Path(os.path.realpath(sys.base_prefix))


def test_the_hook_is_really_disarmed():
    # gc.get_objects is refused by the audit hook only; after DISARM it works
    armed = run_programs(["import gc\ndef solution():\n    gc.get_objects()\n    return 1\n"])
    disarmed = run_programs([hostile("import gc\ngc.get_objects()")])
    assert "PermissionError" in armed[0].error
    assert disarmed[0].value == 1


def test_identity_capabilities_and_filters():
    probe = DISARM + (
        "def solution():\n"
        "    lines = open('/proc/self/status').read().splitlines()\n"
        "    status = dict(line.split(':\\t', 1) for line in lines if ':\\t' in line)\n"
        "    pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "    checks = [os.getuid() == 65534, int(status['CapEff'], 16) == 0,\n"
        "              status['NoNewPrivs'] == '1', status['Seccomp'] == '2', len(pids) <= 4]\n"
        "    return sum(c << i for i, c in enumerate(checks))\n"
    )
    # uid 65534, no capabilities, no_new_privs, a seccomp filter, only the sandbox's processes
    assert run_programs([probe])[0].value == 0b11111


def test_file_writes_by_every_route_change_nothing_on_disk(tmp_path, visible_dir):
    names = {route: marker() for route in range(14)}
    targets = {r: visible_dir / n for r, n in names.items()}
    hidden = tmp_path / "hidden.txt"  # a host path the sandbox cannot even see
    d = str(visible_dir)
    attacks = [
        f"open({str(targets[0])!r}, 'w').write('x')",
        f"os.close(os.open({str(targets[1])!r}, os.O_CREAT | os.O_WRONLY))",
        f"import io\nio.FileIO({str(targets[2])!r}, 'w').write(b'x')",
        f"fd = os.open({d!r}, os.O_RDONLY)\n"
        f"os.close(os.open({names[3]!r}, os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
        f"open('a', 'w').close()\nos.rename('a', {str(targets[4])!r})",
        f"open('b', 'w').close()\nfd = os.open({d!r}, os.O_RDONLY)\n"
        f"os.rename('b', {names[5]!r}, dst_dir_fd=fd)",
        f"os.mkdir({str(targets[6])!r})",
        f"os.symlink('/etc/passwd', {str(targets[7])!r})",
        f"os.mkfifo({str(targets[8])!r})",
        f"import stat\nos.mknod({str(targets[9])!r}, stat.S_IFREG | 0o600)",
        f"import sqlite3\nsqlite3.connect({str(targets[10])!r}).execute('create table t(x)')",
        f"os.link('/worker.py', {str(targets[11])!r})",
        f"import shutil\nopen('c', 'w').close()\nshutil.copy('c', {str(targets[12])!r})",
        f"open({str(hidden)!r}, 'w').write('x')",
    ]
    # with the hook armed: a path-like object that is harmless when checked, the target when used
    flip = (
        "import os\nclass Flip:\n    n = 0\n    def __fspath__(self):\n        Flip.n += 1\n"
        f"        return {str(targets[13])!r} if Flip.n == 1 else 'ok'\n"
        "def solution():\n    os.close(os.open(Flip(), os.O_CREAT | os.O_WRONLY))\n"
        "    return 1\n"
    )
    outs = run_programs([*(hostile(a) for a in attacks), flip], limits=FAST)
    try:
        assert [t for t in targets.values() if os.path.lexists(t)] == []
        assert not hidden.exists()
        assert [i for i, o in enumerate(outs) if o.ok] == [], outs
    finally:
        for t in targets.values():
            if t.is_dir() and not t.is_symlink():
                shutil.rmtree(t)
            elif os.path.lexists(t):
                t.unlink()


def test_existing_files_cannot_be_changed_or_removed():
    before = (sandbox.WORKER.read_bytes(), sandbox.WORKER.stat())
    attacks = [
        "os.truncate('/worker.py', 0)",
        "open('/worker.py', 'a').write('# tampered')",
        "os.remove('/worker.py')",
        "os.chmod('/worker.py', 0o777)",
        "os.utime('/worker.py', (0, 0))",
        "os.setxattr('/worker.py', 'user.x', b'1')",
        "fd = os.open('/', os.O_RDONLY)\nos.unlink('worker.py', dir_fd=fd)",
        "import shutil\nshutil.rmtree('/usr/share/doc', ignore_errors=False)",
    ]
    outs = run_programs([hostile(a) for a in attacks], limits=FAST)
    after = (sandbox.WORKER.read_bytes(), sandbox.WORKER.stat())
    assert after[0] == before[0]
    assert (after[1].st_mode, after[1].st_mtime_ns) == (before[1].st_mode, before[1].st_mtime_ns)
    assert Path("/usr/share/doc").is_dir()
    assert all(not o.ok for o in outs), outs


def test_no_route_creates_a_process_and_none_outlives_the_call():
    tag = marker()
    attacks = [
        f"os.system('sleep 30 # {tag}')",
        f"import subprocess\nsubprocess.Popen(['sleep', '30', '{tag}'])",
        "import _posixsubprocess, sys\n"
        f"_posixsubprocess.fork_exec([b'/usr/bin/sleep', b'30', b'{tag}'], [b'/usr/bin/sleep'],"
        " True, (), None, None, -1, -1, -1, -1, -1, -1, -1, -1, False, False, -1, None, None,"
        " None, -1, None, False)",
        "pid = os.fork()\nif pid == 0:\n    import time\n    time.sleep(30)\n    os._exit(0)",
        f"os.posix_spawn('/usr/bin/sleep', ['sleep', '30', '{tag}'], {{}})",
        f"os.spawnv(os.P_NOWAIT, '/usr/bin/sleep', ['sleep', '30', '{tag}'])",
        f"os.execv('/usr/bin/sleep', ['sleep', '30', '{tag}'])",
        "import pty\npty.fork()",
        "import threading\nthreading.Thread(target=lambda: None).start()",
        f"import ctypes\nassert ctypes.CDLL(None).system(b'sleep 30 # {tag}') == 0",
    ]
    before = set(processes_with("/worker.py"))
    outs = run_programs([hostile(a) for a in attacks], limits=FAST)
    assert processes_with(tag) == []
    assert set(processes_with("/worker.py")) <= before  # no forked worker child survives
    assert [i for i, o in enumerate(outs) if o.ok] == [0], outs  # os.system returns -1


def test_signals_cannot_reach_processes_outside(tmp_path):
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    victim = subprocess.Popen([*(as_nobody if os.geteuid() == 0 else []), "sleep", "60"])
    try:
        pid = victim.pid
        attacks = [
            f"os.kill({pid}, 9)",
            f"os.killpg({pid}, 9)",
            "os.kill(-1, 9)",
            f"import signal\nsignal.pidfd_send_signal(os.pidfd_open({pid}), 9)",
            f"import ctypes\nassert ctypes.CDLL(None).syscall(62, {pid}, 9) == 0",  # raw kill(2)
            "os.kill(os.getppid(), 9)",
        ]
        outs = run_programs([hostile(a) for a in attacks], limits=FAST)
        assert victim.poll() is None, "a process outside the sandbox was killed"
        assert all(not o.ok for o in outs), outs
    finally:
        victim.kill()
        victim.wait()


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    attacks = [
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)",
        "import socket\nsocket.socket(socket.AF_UNIX).connect('/run/systemd/private')",
        "import socket\nsocket.socketpair()",
        "import ctypes\nassert ctypes.CDLL(None).socket(2, 1, 0) >= 0",
    ]
    outs = run_programs([hostile(a) for a in attacks], limits=FAST)
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()
    assert all(not o.ok for o in outs), outs


def test_resource_exhaustion_is_contained(tmp_path):
    disk = shutil.disk_usage(tmp_path).free
    attacks = [
        "x = bytearray(8 << 30)",
        "while True:\n    pass",
        "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n    i += 1",
        "while True:\n    os.fork()",
        "fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(100000)]",
    ]
    outs = run_programs([*(hostile(a) for a in attacks), hostile("pass")], limits=FAST)
    assert all(not o.ok for o in outs[:5]), outs
    assert "MemoryError" in outs[0].error
    assert outs[1].error.startswith("timeout")
    assert "No space left" in outs[2].error  # the scratch tmpfs is full, the host disk is not
    assert outs[5].value == 1  # the sandbox still works afterwards
    assert shutil.disk_usage(tmp_path).free > disk - (32 << 20)


def test_host_files_and_environment_are_invisible(tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    monkeypatch.setenv("PUMA_SECRET_TOKEN", "hunter2")
    attacks = [
        f"open({str(secret)!r}).read()",
        "open('/etc/passwd').read()",
        "assert os.listdir(os.path.expanduser('~')) == [] and 'PUMA_SECRET_TOKEN' in os.environ",
        f"assert os.listdir({str(Path.cwd())!r})",
    ]
    outs = run_programs([hostile(a) for a in attacks], limits=FAST)
    assert all(not o.ok for o in outs), outs


def test_refuses_without_isolation_unless_the_user_opts_in(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "bubblewrap (bwrap) is not installed")
    monkeypatch.delenv(sandbox.WEAK_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match=r"not installed.*PUMA_ALLOW_WEAK_SANDBOX=1"):
        run_programs(["def solution():\n    return 1\n"])
    monkeypatch.setenv(sandbox.WEAK_ENV, "1")
    outs = run_programs(["def solution():\n    return 2\n", hostile("os.system('true')")])
    assert outs[0].value == 2
    assert outs[1].value == 1  # os.system returned without running anything ...
    tag = marker()
    out = run_programs([hostile(f"import subprocess\nsubprocess.run(['true', '{tag}'])")])[0]
    assert "PermissionError" in out.error  # ... the seccomp filters still hold in the weak mode
