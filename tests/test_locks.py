"""Folder locks (oodbench/locks.py) between real processes: refused with the holder named, shared with
shared, free again the moment the holder dies however it dies, and reentrant within one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oodbench.locks import FolderBusy, busy, hold, holders

HOLDER = textwrap.dedent("""
    import sys
    from oodbench.locks import hold
    with hold(sys.argv[1], shared=sys.argv[2] == "shared"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin (or kills us)
""")


@pytest.fixture
def holding(tmp_path):
    """Start a process that holds `folder` (exclusive or shared) until released; yields a starter."""
    started: list[subprocess.Popen] = []

    def start(folder: Path, mode: str = "exclusive") -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), mode], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def release(process: subprocess.Popen) -> None:
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def test_a_held_folder_is_refused_naming_the_holder(tmp_path, holding):
    other = holding(tmp_path)
    with pytest.raises(FolderBusy) as refused:
        with hold(tmp_path, label="run folder X"):
            pass
    message = str(refused.value)
    assert message.startswith("run folder X is in use by `") and f"(process {other.pid} on {socket.gethostname()}, since 20" \
        in message and message.endswith("wait for it to finish (or stop it) and rerun this command")
    assert "\n" not in message and refused.value.exit_code == 2
    assert busy(tmp_path, shared=True) is not None  # a reader is refused too
    release(other)
    assert busy(tmp_path) is None and holders(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # the holder's note went with it


def test_readers_share_and_a_writer_is_refused_by_any_of_them(tmp_path, holding):
    readers = [holding(tmp_path, "shared"), holding(tmp_path, "shared")]
    with hold(tmp_path, shared=True):
        pass
    with pytest.raises(FolderBusy) as refused:
        with hold(tmp_path):
            pass
    assert {h.pid for h in refused.value.holders} == {p.pid for p in readers}
    for reader in readers:
        release(reader)
    with hold(tmp_path):
        pass


def test_a_holder_killed_with_sigkill_blocks_nothing_and_its_note_is_cleared(tmp_path, holding):
    other = holding(tmp_path)
    note = tmp_path / f".lock.{socket.gethostname()}.{other.pid}"
    assert note.is_file()
    other.kill()  # no clean-up code runs: only the kernel releases the lock
    other.wait()
    assert holders(tmp_path) == []  # a dead process of this host is nobody
    with hold(tmp_path):
        assert not note.exists()
        assert [h.pid for h in holders(tmp_path)] == []  # this process does not name itself


def test_waiting_blocks_until_the_holder_is_gone(tmp_path, holding):
    other = holding(tmp_path)
    told: list[FolderBusy] = []

    def on_wait(refused: FolderBusy) -> None:
        told.append(refused)
        other.stdin.close()  # the holder finishes while we wait

    with hold(tmp_path, wait=True, on_wait=on_wait):
        assert other.wait(timeout=30) == 0
    assert [h.pid for h in told[0].holders] == [other.pid]


def test_a_process_holds_its_own_folder_again(tmp_path):
    with hold(tmp_path):
        with hold(tmp_path), hold(tmp_path, shared=True), hold(tmp_path / "." / "", shared=True):
            pass
        assert busy(tmp_path) is None  # still held, by us
    with hold(tmp_path, shared=True):
        with pytest.raises(RuntimeError, match="cannot be made exclusive"):
            with hold(tmp_path):
                pass


def test_locks_are_not_inherited_by_child_processes(tmp_path):
    with hold(tmp_path):
        # close_fds=False: the child gets every inheritable descriptor, as a DDP launcher's children would
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
    try:
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "exclusive"], input="", text=True,
                               capture_output=True, timeout=30)
        assert probe.returncode == 0 and probe.stdout.strip() == "held", probe.stderr
    finally:
        child.kill()
        child.wait()


def test_a_probe_of_a_missing_folder_makes_nothing(tmp_path):
    assert busy(tmp_path / "never") is None and not (tmp_path / "never").exists()
    with hold(tmp_path / "made" / "now"):
        assert (tmp_path / "made" / "now" / ".lock").is_file()
    assert os.listdir(tmp_path / "made" / "now") == [".lock"]
