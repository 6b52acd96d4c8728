"""Helper processes: stopping one the way every devkit runner does (SIGTERM, then SIGKILL after a
grace period; its log file closed), and what one costs in memory."""
from __future__ import annotations

import subprocess
from pathlib import Path


def stop(proc: subprocess.Popen | None, log_file, grace: float = 10) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_file.close()


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, private dirty) in MB, from /proc/<pid>/smaps_rollup: private dirty is what the
    process costs the node beyond pages it shares with others."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, _, v = line.partition(":")
        fields[k] = int(v.split()[0]) / 1024
    return fields["Rss"], fields["Private_Dirty"]
