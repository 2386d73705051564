"""File helpers shared by data, checkpoints and results: hashing and atomic writes."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file with ``hashlib``'s ``algorithm`` (``"sha256"``, ``"md5"``, ...), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (checkpoints, the mirror's CIFAR-10 files)."""
    return file_digest(path, "sha256")


def md5_file(path: str | os.PathLike) -> str:
    """Hex md5 of a file (torchvision's dataset checksums are md5)."""
    return file_digest(path, "md5")


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    A crash or exception leaves ``target`` as it was (never half-written) and
    removes the temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the owner's pid in the name: a later run removes what a killed one left (remove_stale_partials)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_PID_MARK}{os.getpid()}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the final file gets the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


_PID_MARK = "pid"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a lock-free way to tell a killed writer from a concurrent one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` whose writing process is gone.

    A process killed with SIGKILL runs no cleanup, so its hidden ``.<name>.pid<N>.<random><suffix>`` file stays;
    files of live processes (a concurrent run) are left alone. Returns the paths removed.
    """
    removed = []
    for path in Path(folder).glob(f".*.{_PID_MARK}*"):
        mark = next((part for part in path.name.split(".") if part.startswith(_PID_MARK)), "")
        pid = mark[len(_PID_MARK):]
        if path.is_file() and pid.isdigit() and not pid_alive(int(pid)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
