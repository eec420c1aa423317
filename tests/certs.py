"""Real X.509 certificates for the TLS tests, made by the openssl command line in a tmp dir.

A CA, server certificates for localhost and 127.0.0.1 signed by it, client certificates
for mutual TLS. (`cryptography` is not a dependency of the project; openssl is, for the
tests: scripts/install_test_tools.sh installs it.)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class CertificateAuthority:
    def __init__(self, folder: Path, name: str = "sdedit test CA"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = folder / "ca.crt", folder / "ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                 "-subj", f"/CN={name}", "-keyout", str(self.key), "-out", str(self.cert), cwd=folder)

    def issue(self, name: str, *, server: bool = True, san: str = "DNS:localhost,IP:127.0.0.1") -> Pair:
        """A leaf certificate (server or client) signed by this CA, files `<name>.crt/.key`."""
        key, csr, cert, ext = (self.folder / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        usage = "serverAuth" if server else "clientAuth"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(key), "-out", str(csr), cwd=self.folder)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
                 "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=self.folder)
        return Pair(cert, key)


def serial_of(cert_pem: bytes) -> str:
    """The serial number of a PEM certificate, as openssl prints it (hex)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=cert_pem, check=True, capture_output=True)
    return out.stdout.decode().strip().split("=", 1)[1]


class ServedFiles:
    """The certificate and key files a server is pointed at, in their own folder, and a
    rotation done the way Kubernetes swaps a Secret volume: new files, renamed into place."""

    def __init__(self, folder: Path, pair: Pair):
        import shutil

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.cert, self.key = folder, folder / "tls.crt", folder / "tls.key"
        shutil.copy(pair.cert, self.cert)
        shutil.copy(pair.key, self.key)

    def rotate_to(self, pair: Pair) -> None:
        import shutil

        shutil.copy(pair.cert, self.folder / "new.crt")
        shutil.copy(pair.key, self.folder / "new.key")
        (self.folder / "new.key").replace(self.key)
        (self.folder / "new.crt").replace(self.cert)
