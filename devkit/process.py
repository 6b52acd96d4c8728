"""Stopping a helper process the way every devkit runner does: SIGTERM, then SIGKILL after a
grace period; its log file closed."""
from __future__ import annotations

import subprocess


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
