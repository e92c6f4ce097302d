"""Real registries for the pull tests: Debian's `docker-registry` on loopback, as the
test asks for it (plain HTTP, htpasswd auth, TLS from a private CA), and the images
pushed into it.

A `LocalRegistry` owns one `docker-registry serve` process: a port reserved like the
servers' (conftest's `PortLock`), a temporary directory with its config, its storage,
its htpasswd file and certificates, and its log. docker-registry writes an access log
line (combined log format) per request to stdout; `requests()` parses them, so tests
can count what a pull asked for (`GET /v2/<repo>/blobs/<digest>`...). `close()` kills
the process and removes the directory.

Images get in with `skopeo copy`: busybox images from `skiff-testkit` archives
(`busybox_archive`), and images that need no runnable content (a hostile layer, a big
random one) from OCI layout directories written here (`write_oci_layout`), whose
layers are tar streams built with `tarfile` (`tar_layer`).
"""

import base64
import contextlib
import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import TESTKIT, PortLock

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
# `127.0.0.1 - - [28/Nov/2026:06:46:02 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skopeo/1.9.3"`
ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r'(?P<status>\d{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"'
)
# An access line is written once the response is sent: give it time to land.
LOG_SETTLE = 0.3


@dataclass(frozen=True)
class Request:
    """One request from the registry's access log."""

    method: str
    path: str
    status: int
    agent: str


@dataclass(frozen=True)
class CertificateAuthority:
    """A private CA (certificate and key as PEM files)."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, directory, name):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory / f"{name}.pem", directory / f"{name}.key")
        ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ca.key.write_bytes(_private_pem(key))
        return ca

    def issue_server_cert(self, directory, ip="127.0.0.1"):
        """A certificate for `ip` signed by this CA; returns (cert path, key path)."""
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        directory = Path(directory)
        cert_path, key_path = directory / "server.pem", directory / "server.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_private_pem(key))
        return cert_path, key_path


def _private_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalRegistry:
    """One docker-registry on 127.0.0.1, optionally with htpasswd auth and TLS."""

    def __init__(self, credentials=None, ca=None):
        """`credentials`: (user, password) to require; `ca`: a CertificateAuthority that
        signs the registry's certificate (TLS), or None for plain HTTP."""
        self._port_lock = PortLock()
        self.port = self._port_lock.port
        self.host = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="skreg"))
        self.storage = self.dir / "data"
        self.log_path = self.dir / "registry.log"
        self.credentials = credentials
        self.ca = ca
        self.process = None
        self._write_config()

    def _write_config(self):
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
        ]
        if self.ca is not None:
            cert, key = self.ca.issue_server_cert(self.dir)
            lines += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
            # skopeo's --dest-cert-dir takes every *.crt in the directory as a CA.
            self.cert_dir = self.dir / "certs"
            self.cert_dir.mkdir()
            shutil.copy(self.ca.cert, self.cert_dir / "ca.crt")
        if self.credentials is not None:
            user, password = self.credentials
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text(f"{user}:{hashed}\n")
            lines += ["auth:", "  htpasswd:", "    realm: skiff-e2e", f"    path: {htpasswd}"]
        (self.dir / "config.yml").write_text("\n".join(lines) + "\n")

    # --- process control -------------------------------------------------------------

    def start(self, timeout=20.0):
        """Starts the registry and waits until `/v2/` answers."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(self.dir / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                status, _, _ = self.request("GET", "/v2/", authenticate=False)
                if status in (200, 401):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer on {self.host}:\n{self.log_tail()}")

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._port_lock.release()

    def log_tail(self, lines=30):
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no registry log)"

    # --- HTTP ------------------------------------------------------------------------

    @property
    def scheme(self):
        return "https" if self.ca is not None else "http"

    def request(self, method, path, headers=None, authenticate=True):
        """One request to the registry API; returns (status, headers, body)."""
        request = urllib.request.Request(
            f"{self.scheme}://{self.host}{path}", method=method, headers=headers or {}
        )
        if authenticate and self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.ca.cert)) if self.ca else None
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def manifest_digest(self, repository, reference):
        """The registry's own digest for a tag: `Docker-Content-Digest` of a HEAD."""
        status, headers, _ = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        assert status == 200, f"HEAD of {repository}:{reference} answered {status}"
        return headers["Docker-Content-Digest"]

    def manifest(self, repository, reference):
        """The manifest document a tag or digest names."""
        status, _, body = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        assert status == 200, f"GET of {repository}:{reference} answered {status}"
        return json.loads(body)

    def blob_digests(self, repository, reference):
        """The config and layer digests of an image, config first."""
        manifest = self.manifest(repository, reference)
        return [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]

    # --- the access log --------------------------------------------------------------

    def requests(self, settle=True):
        """Every request the registry has answered so far, in order."""
        if settle:
            time.sleep(LOG_SETTLE)
        found = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                match = ACCESS_LINE.match(line)
                if match:
                    found.append(
                        Request(
                            match["method"],
                            match["path"],
                            int(match["status"]),
                            match["agent"],
                        )
                    )
        return found

    def blob_downloads(self, repository=None, settle=True):
        """Digests of the blobs served by successful `GET`s, one entry per download."""
        prefix = f"/v2/{repository}/blobs/" if repository else "/v2/"
        return [
            r.path.rsplit("/", 1)[1]
            for r in self.requests(settle)
            if r.method == "GET"
            and r.path.startswith(prefix)
            and "/blobs/sha256:" in r.path
            and 200 <= r.status < 300
        ]

    # --- storage ---------------------------------------------------------------------

    def blob_file(self, digest):
        """The file holding a blob in the registry's filesystem storage."""
        hex_digest = digest.split(":", 1)[1]
        return (
            self.storage
            / "docker/registry/v2/blobs/sha256"
            / hex_digest[:2]
            / hex_digest
            / "data"
        )

    # --- pushing ---------------------------------------------------------------------

    def push(self, source, destination):
        """`skopeo copy SOURCE docker://HOST/DESTINATION`; returns the manifest digest
        the registry now serves for it."""
        command = ["skopeo", "--insecure-policy", "copy", "--quiet"]
        if self.ca is not None:
            command += ["--dest-cert-dir", str(self.cert_dir)]
        else:
            command += ["--dest-tls-verify=false"]
        if self.credentials is not None:
            command += ["--dest-creds", ":".join(self.credentials)]
        command += [source, f"docker://{self.host}/{destination}"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, f"skopeo copy failed: {completed.stderr}"
        repository, _, tag = destination.rpartition(":")
        return self.manifest_digest(repository, tag)

    def push_busybox(self, directory, destination, marker):
        """Pushes a busybox image whose /etc/image-marker holds `marker` (so that its
        top layer, config and manifest are its own); returns its manifest digest."""
        archive = busybox_archive(directory, destination, marker)
        return self.push(f"oci-archive:{archive}", destination)

    def push_layout(self, layout, tag, destination):
        return self.push(f"oci:{layout}:{tag}", destination)


@contextlib.contextmanager
def running_registry(credentials=None, ca=None):
    registry = LocalRegistry(credentials, ca)
    try:
        yield registry.start()
    finally:
        registry.close()


def busybox_archive(directory, name, marker):
    """An OCI archive of busybox plus /etc/image-marker, made by skiff-testkit."""
    stem = hashlib.sha256(f"{name}\0{marker}".encode()).hexdigest()[:16]
    out = Path(directory) / f"{stem}.tar"
    completed = subprocess.run(
        [str(TESTKIT), "busybox", str(out), name, "--file", f"etc/image-marker={marker}"],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, f"skiff-testkit failed: {completed.stderr}"
    return out


# --- OCI layouts written here -----------------------------------------------------------


def tar_layer(entries):
    """A tar stream of `entries`: ("file", path, bytes), ("dir", path) or
    ("symlink", path, target). Paths are written verbatim, hostile ones included."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, path, *rest in entries:
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, rest[0], 0o777
                tar.addfile(info)
            else:
                raise ValueError(f"unknown tar entry kind {kind!r}")
    return buffer.getvalue()


def write_oci_layout(directory, tag, layers):
    """Writes an OCI image layout holding one linux/amd64 image of `layers` (tar
    streams, gzipped here) tagged `tag`; returns the layout directory."""
    directory = Path(directory)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    descriptors = [
        put(
            gzip.compress(layer, compresslevel=1, mtime=0),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
        for layer in layers
    ]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": descriptors,
    }
    entry = put(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return directory


def random_layer(size, name="data.bin"):
    """A layer of one file of `size` random (incompressible) bytes."""
    return tar_layer([("file", name, os.urandom(size))])

