"""Helpers shared by the benchmarks in bench/ (start-latency, pull).

Both run everything in a network namespace they create and join, so that `skiff server`,
a loopback `docker-registry`, boto3 and every peer talk over that namespace's loopback
and never touch the host's network. This module holds what they share: the namespace,
the registry, starting and stopping the server, the release binaries, small helpers.
Every start here has a matching stop that is safe to call on any exit path, also when
the start failed half-way or never happened.
"""

import collections
import configparser
import ctypes
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
REGISTRY = "127.0.0.1:5000"  # docker-registry, inside the benchmark's namespace
CLONE_NEWNET = 0x40000000


class BenchError(Exception):
    """A step failed; the message says which and what to check."""


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args, **kwargs):
    """Runs a command and returns its stdout; raises BenchError with its stderr on failure."""
    args = [str(a) for a in args]
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise BenchError(f"`{shlex.join(args)}` failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def setns(path):
    """Moves this thread (and the threads and processes it starts later) into a netns."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise BenchError(f"cannot enter the network namespace {path}: "
                             f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class Netns:
    """A network namespace with loopback up, which this thread joins; `leave` undoes
    `enter` (back to the namespace it came from, then `ip netns del`) and is safe to
    call whatever `enter` got done, or more than once."""

    def __init__(self, name):
        self.name, self.path = name, f"/run/netns/{name}"
        self.home = None  # fd of the namespace to go back to, while inside ours
        self.created = False

    def enter(self):
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        run(["ip", "netns", "add", self.name])
        self.created = True
        run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"])
        setns(self.path)

    def leave(self):
        if self.home is not None:
            setns(f"/proc/self/fd/{self.home}")
            os.close(self.home)
            self.home = None
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False


def wait_port(address, process, what, log_path, timeout=30.0):
    """Waits until `process` listens on `address`; raises with its log's tail if it exits
    or does not listen within `timeout` seconds."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                raise BenchError(f"{what} is not listening on {address} "
                                 f"(exit status {process.poll()}):\n{tail}") from None
            time.sleep(0.05)


def start_process(args, log_path, address, what, env=None):
    """Starts a server with its output in `log_path` and waits until it listens on
    `address`. If it does not, it is stopped before the error is raised."""
    with open(log_path, "w") as output:  # the child keeps its own descriptor
        process = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(address, process, what, log_path)
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process, timeout=15.0):
    """SIGTERM, then SIGKILL after `timeout` seconds; a no-op if it has exited."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_server(binary, state_dir, listen, bridge, subnet, log_path, insecure_registry=None):
    """`skiff server` on `listen` with its state in `state_dir`, in this namespace."""
    args = [binary, "server", "--listen", listen, "--state-dir", state_dir,
            "--bridge", bridge, "--subnet", subnet]
    if insecure_registry:
        args += ["--insecure-registry", insecure_registry]
    return start_process(args, log_path, listen, "skiff server",
                         env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info")))


def cli_env(state_dir, endpoint):
    """The environment the `skiff` CLI needs to talk to the server as its admin."""
    return dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(Path(state_dir, "credentials")),
                AWS_PROFILE="skiff", AWS_REGION=REGION, SKIFF_ENDPOINT=endpoint)


def ecs_client(state_dir, endpoint, **config):
    """(boto3 session, ECS client) with the admin key the server wrote on first start;
    `config` goes to botocore's Config (no retries unless given)."""
    import boto3  # the scripts check it is there, with their own advice
    import botocore.config

    creds = configparser.ConfigParser()
    creds.read(Path(state_dir, "credentials"))
    session = boto3.session.Session(
        aws_access_key_id=creds["skiff"]["aws_access_key_id"],
        aws_secret_access_key=creds["skiff"]["aws_secret_access_key"], region_name=REGION)
    config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
    return session, session.client("ecs", endpoint_url=endpoint,
                                   config=botocore.config.Config(**config))


class Registry:
    """Debian's `docker-registry` on REGISTRY, with filesystem storage under `workdir`.
    `stop` ends the process and removes its directory (storage, config and log)."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / "registry"
        self.log_path = self.dir / "registry.log"
        self.process = None

    def start(self):
        self.dir.mkdir()
        (self.dir / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.dir / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {REGISTRY}\n")
        self.process = start_process(["docker-registry", "serve", self.dir / "config.yml"],
                                     self.log_path, REGISTRY, "docker-registry")

    def push(self, source, repository_tag):
        """Copies an image (a skopeo transport:path, e.g. `oci-archive:x.tar`) in as
        REGISTRY/`repository_tag`; returns that reference."""
        reference = f"{REGISTRY}/{repository_tag}"
        run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
             source, f"docker://{reference}"])
        return reference

    def requests(self):
        """Requests served so far, from the access log: a Counter of `METHOD kind STATUS`,
        kind being `/v2/` (the API check), `manifests`, `blobs`, `uploads` or `other`."""
        time.sleep(0.3)  # a line is written once its response is sent
        counts = collections.Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                request, status = line.split('"')[1:3]
                method, path = request.split(" ")[:2]
            except ValueError:
                continue  # not an access-log line
            kind = "/v2/" if path == "/v2/" else next(
                (k for k in ["uploads", "blobs", "manifests"] if f"/{k}/" in path), "other")
            counts[f"{method} {kind} {status.split()[0]}"] += 1
        return counts

    def blob_downloads(self):
        """Successful blob GETs so far."""
        return sum(n for key, n in self.requests().items()
                   if key.startswith("GET blobs 20"))

    def head_ms(self, repository_tag, count):
        """`count` manifest HEADs of REGISTRY/`repository_tag` from this process, each on a
        new connection, in ms: the registry's share of a tag check, next to the client's."""
        path = "/v2/{}/manifests/{}".format(*repository_tag.rsplit(":", 1))
        accept = ", ".join(["application/vnd.oci.image.index.v1+json",
                            "application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])
        host, port = REGISTRY.rsplit(":", 1)
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                connection.request("HEAD", path, headers={"Accept": accept})
                response = connection.getresponse()
                response.read()
            finally:
                connection.close()
            times.append((time.perf_counter_ns() - start) / 1e6)
            if response.status != 200 or not response.getheader("Docker-Content-Digest"):
                raise BenchError(f"HEAD {REGISTRY}{path}: {response.status} {response.reason}")
        return times

    def version(self):
        return run(["docker-registry", "--version"]).split()[-1]

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # nothing to flush: the benchmark is done with its data
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def ensure_packages(packages):
    """apt-get installs the Debian packages whose command is missing ({command: package});
    call it before leaving the host's network namespace."""
    missing = sorted({package for command, package in packages.items()
                      if shutil.which(command) is None})
    if missing:
        log(f"installing {', '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def binaries(profile="release"):
    """(skiff, skiff-testkit) of target/<profile>, built if one of the binaries is missing;
    warns when the sources changed since the build (the figures would describe old code)."""
    target = REPO / "target" / profile
    names = ["skiff", "skiff-testkit", "skiff-supervisor"]
    if not all((target / name).exists() for name in names):
        command = ["cargo", "build", "--workspace", "--bins"] + \
            (["--release"] if profile == "release" else [])
        log(f"building: {shlex.join(command)}")
        subprocess.run(command, cwd=REPO, check=True)
    # cargo relinks `skiff` whenever a crate it is built from changed; testkit is not one.
    built = (target / "skiff").stat().st_mtime
    newer = [path for path in (REPO / "crates").rglob("*")
             if path.suffix == ".rs" or path.name == "Cargo.toml"
             if "testkit" not in path.parts and path.stat().st_mtime > built]
    if newer:
        log(f"warning: target/{profile}/skiff may be stale: {len(newer)} source files changed "
            f"since it was built (e.g. {newer[0].relative_to(REPO)}); rebuild with `cargo "
            f"build {'--release ' if profile == 'release' else ''}--workspace --bins`")
    return target / "skiff", target / "skiff-testkit"


# --- Added for bench/services: the run's facts, more AWS clients, and the last-resort
# clean-up of tasks the server left behind (the same steps as bench/start-latency's). ---

CGROUP_PARENT = "skiff"  # sandbox::DriverConfig's default: <hierarchy>/skiff/<task-id>
RUNTIME_ROOT = "/run/skiff/runc"  # sandbox::DriverConfig's default runc --root
RUNC = "/usr/sbin/runc"


def load_average():
    """The 1-, 5- and 15-minute load averages, as /proc/loadavg prints them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def git_revision():
    """`<short commit>`, plus ` + working tree` when files differ from it or are new;
    read-only (no index refresh), `unknown` outside a checkout."""
    def git(*args):
        return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *args],
                              capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + working tree" if git("status", "--porcelain") else "")


def aws_client(session, service, endpoint, **config):
    """A boto3 client of `service` (e.g. `elbv2`) for `session` (from ecs_client) on the
    same endpoint; `config` goes to botocore's Config (no retries unless given)."""
    import botocore.config

    config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
    return session.client(service, endpoint_url=endpoint,
                          config=botocore.config.Config(**config))


def cgroup_mounts():
    """{mount point: v1 controllers, or None for cgroup2} from /proc/self/mountinfo."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split(" ")[:3]
        if fstype in ("cgroup", "cgroup2"):
            mounts[left.split(" ")[4]] = options.split(",") if fstype == "cgroup" else None
    return mounts


def supervisors(state_dir):
    """Pids of the task supervisors of the server whose state is in `state_dir` (their
    --task-dir is under it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"supervise" in argv and any(a.startswith(os.fsencode(state_dir)) for a in argv):
            pids.append(int(entry.name))
    return pids


def task_leftovers(task_id, containers=("main",)):
    """What of a task is still on the host (its netns, runc state, cgroups): nothing once
    the server has stopped it. `containers` are the task's container names."""
    paths = [Path("/run/netns", f"skiff-{task_id}")]
    paths += [Path(RUNTIME_ROOT, f"{task_id}-{name}") for name in containers]
    paths += [Path(point, CGROUP_PARENT, task_id) for point in cgroup_mounts()]
    return [str(path) for path in paths if path.exists()]


def force_remove_tasks(task_ids, containers=("main",)):
    """Last resort for tasks the server left behind: the sandbox driver's own clean-up
    steps. Returns what could not be removed."""
    problems = []
    for task_id in task_ids:
        for name in containers:
            subprocess.run([RUNC, "--root", RUNTIME_ROOT, "delete", "--force",
                            f"{task_id}-{name}"], capture_output=True)
        for point in cgroup_mounts():
            for path in [*(Path(point, CGROUP_PARENT, task_id, n) for n in containers),
                         Path(point, CGROUP_PARENT, task_id)]:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as error:
                    problems.append(f"cannot remove cgroup {path}: {error}")
        subprocess.run(["ip", "netns", "del", f"skiff-{task_id}"], capture_output=True)
    return problems
