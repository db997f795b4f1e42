import time

import pytest

from puma_mdm.sandbox import Limits, run_programs

FAST = Limits(timeout=1.0)


def program(body: str, imports: str = "") -> str:
    lines = "".join(f"    {line}\n" for line in body.splitlines())
    return f"{imports}\ndef solution():\n{lines}"


def test_programs_return_their_numbers_in_order():
    outs = run_programs([program(f"return {i} * 3") for i in range(20)] + [program("return 7/2")])
    assert [o.value for o in outs] == [3 * i for i in range(20)] + [3.5]
    assert all(o.ok for o in outs)


def test_an_infinite_loop_is_killed_and_the_next_program_still_runs():
    loops = [
        program("while True:\n    pass"),
        program("try:\n    while True:\n        pass\nexcept BaseException:\n    return 5"),
        program("time.sleep(60)", imports="import time"),
    ]
    start = time.monotonic()
    outs = run_programs([*loops, program("return 1")], limits=FAST)
    assert time.monotonic() - start < 15
    assert [o.error.startswith("timeout") for o in outs[:3]] == [True] * 3
    assert outs[3].value == 1


def test_writes_outside_the_sandbox_directory_are_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    attempts = [
        program(f"open({str(target)!r}, 'w').write('x')\nreturn 1"),
        program(f"os.close(os.open({str(target)!r}, os.O_CREAT))\nreturn 1", "import os"),
        program(f"pathlib.Path({str(target)!r}).write_text('x')\nreturn 1", "import pathlib"),
        program(f"os.rename('x', {str(target)!r})\nreturn 1", "import os"),
        program(f"os.system('touch {target}')\nreturn 1", "import os"),
    ]
    outs = run_programs(attempts, limits=FAST)
    assert not target.exists()
    assert all(not o.ok and "PermissionError" in o.error for o in outs), outs


def test_the_working_directory_is_a_writable_scratch_space():
    code = program("open('notes.txt', 'w').write('abc')\nreturn len(open('notes.txt').read())")
    assert run_programs([code])[0].value == 3


@pytest.mark.parametrize(
    "body, imports, needle",
    [
        ("socket.socket()\nreturn 1", "import socket", "socket"),
        ("subprocess.run(['true'])\nreturn 1", "import subprocess", "subprocess"),
        ("os.kill(os.getppid(), 9)\nreturn 1", "import os", "os.kill"),
        ("os.fork()\nreturn 1", "import os", "os.fork"),
        ("ctypes.CDLL(None)\nreturn 1", "import ctypes", "ctypes"),
    ],
)
def test_network_processes_and_ctypes_are_refused(body, imports, needle):
    out = run_programs([program(body, imports)], limits=FAST)[0]
    assert not out.ok and "PermissionError" in out.error and needle in out.error


def test_resource_limits():
    memory_bomb = program("x = bytearray(4 << 30)\nreturn 1")
    big_file = program("open('big', 'wb').write(b'x' * (8 << 20))\nreturn 1")
    outs = run_programs([memory_bomb, big_file], limits=Limits(timeout=2, memory_mb=256))
    assert "MemoryError" in outs[0].error
    assert "File too large" in outs[1].error


def test_the_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("PUMA_SECRET_TOKEN", "hunter2")
    code = program("return len(os.environ.get('PUMA_SECRET_TOKEN', ''))", "import os")
    assert run_programs([code])[0].value == 0


@pytest.mark.parametrize(
    "code, needle",
    [
        ("def solution(:\n", "SyntaxError"),
        ("x = 1\n", "defines no solution()"),
        (program("return 'twelve'"), "returned str, not a number"),
        (program("return True"), "returned bool"),
        (program("return 1 // 0"), "ZeroDivisionError"),
        (program("os._exit(0)", "import os"), "without a result"),
    ],
)
def test_broken_programs_get_a_reason(code, needle):
    out = run_programs([code])[0]
    assert out.value is None and needle in out.error


def test_nothing_to_run():
    assert run_programs([]) == []
