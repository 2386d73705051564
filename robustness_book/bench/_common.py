"""What every mode of the benchmark shares: the provenance of its figures, the JSON it writes, and the
pass/FAIL label of a goal or budget check."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from .._io import atomic_write_text
from ..results import provenance as results_provenance
from ..results import repo_root


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _uncommitted_changes() -> bool | None:
    """Whether tracked files differ from the commit (read-only: no index refresh, no lock); None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                             capture_output=True, text=True, timeout=10, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def provenance(device: torch.device | str = "cpu") -> dict:
    """Where the figures came from: commit (and whether tracked files had uncommitted changes), versions,
    threads, CPU (and GPU), date (UTC)."""
    device = torch.device(device)
    base = results_provenance({"device": device.type})
    return {"git_commit": base["git_commit"], "uncommitted_changes": _uncommitted_changes(),
            "versions": base["versions"], "device": base["device"],
            "threads": torch.get_num_threads(), "cpu": _cpu_name(), "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_json(path: str | os.PathLike, content: dict) -> Path:
    """Write ``content`` (with its provenance) atomically as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(content, indent=1, sort_keys=False) + "\n")
    print(f"wrote {path}")
    return path


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")
