"""The end-to-end harness: real `skiff server` processes driven by the AWS CLI and boto3.

Like Nomad's TestServer, a `Server` owns one server process and everything it needs to be
alone on the host: a free loopback port (held by a lock file while the server lives, so
xdist workers never share one), a short temporary state directory, a bridge named after
the port and a /24 task subnet derived from the port. It starts the server, waits until
the port answers, and hands out an AWS CLI runner, a boto3 ECS client and a `skiff` CLI
runner with the server's credentials. `kill9()` and `restart()` exercise crash survival
with the same state dir, port, bridge and subnet.

Teardown is a check, not just a clean-up: every task is stopped through the API and
waited for, the server is terminated, and then the host is searched for anything a task
left behind (mounts, network namespaces, veths, cgroups, runc containers, supervisor
processes). Leftovers are removed and reported as a test error.

Binaries come from `target/debug` (`SKIFF_BIN_DIR` overrides).
"""

import configparser
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import botocore.config
import pytest
from botocore.validate import ParamValidator

from leftovers import find_leftovers, remove_leftovers

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("SKIFF_BIN_DIR", REPO / "target" / "debug"))
SKIFF = BIN_DIR / "skiff"
TESTKIT = BIN_DIR / "skiff-testkit"
REGION = "us-east-1"
IMAGE = "docker.io/library/busybox:latest"
DOCKER_IMAGE = "docker.io/library/busybox-docker:latest"
# An image no one has: pulling it only ever tries a registry on loopback port 1, so no
# test sends traffic (not even a DNS query) off the host.
MISSING_IMAGE = "127.0.0.1:1/skiff-e2e/missing:1"
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "skiff-e2e-ports"
TASK_ID = re.compile(r"^[0-9a-f]{32}$")
# A container command that runs until stopped and exits 0 on SIGTERM at once (a bare
# `sleep` as pid 1 ignores SIGTERM and would hold every stop for the stopTimeout).
LONG_RUNNING = "trap 'exit 0' TERM; sleep 600 & wait"


def task_id(task):
    """The 32-hex id of a task: from a task dict, a task ARN, or the id itself."""
    if isinstance(task, dict):
        task = task["taskArn"]
    return task.rsplit("/", 1)[-1]


def wait_until(predicate, timeout=30.0, interval=0.1, message="condition"):
    """Polls `predicate` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def fargate_definition(family, containers, cpu="256", memory="512", **extra):
    """A RegisterTaskDefinition request for FARGATE with the given containers."""
    request = {
        "family": family,
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": cpu,
        "memory": memory,
        "containerDefinitions": containers,
    }
    request.update(extra)
    return request


def container(name="main", command=None, image=IMAGE, **extra):
    """A container definition running busybox `sh -c command`."""
    definition = {"name": name, "image": image, "essential": True}
    if command is not None:
        definition["command"] = ["sh", "-c", command]
    definition.update(extra)
    return definition


class PortLock:
    """A free TCP port on 127.0.0.1, reserved across processes by an flock'd file.

    The file is unlinked on release; a lock taken on a file that was unlinked meanwhile
    is detected (the path no longer names the locked inode) and not trusted."""

    def __init__(self):
        PORT_LOCK_DIR.mkdir(exist_ok=True)
        for _ in range(100):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            path = PORT_LOCK_DIR / f"{port}.lock"
            handle = open(path, "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                    raise BlockingIOError
            except (BlockingIOError, FileNotFoundError):
                handle.close()
                continue
            self.port, self._path, self._handle = port, path, handle
            return
        raise RuntimeError("no free port could be reserved for a test server")

    def release(self):
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._handle.close()


class Result:
    """A finished CLI command: exit code, output, and the output parsed as JSON."""

    def __init__(self, completed):
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else {}

    def __repr__(self):
        return f"Result(rc={self.returncode}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Server:
    """One `skiff server` with its own port, state directory, bridge and subnet."""

    def __init__(self, extra_args=()):
        self._port_lock = PortLock()
        # More `skiff server` flags (e.g. `--insecure-registry HOST:PORT`).
        self.extra_args = [str(arg) for arg in extra_args]
        self.port = self._port_lock.port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # Short: the supervisors' unix sockets live below it (108-byte path limit).
        self.state_dir = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp"))
        self.log_path = Path(str(self.state_dir) + ".log")
        self.bridge = f"skt{self.port}"
        self.subnet_prefix = f"10.{self.port >> 8}.{self.port & 0xFF}"
        self.subnet = f"{self.subnet_prefix}.0/24"
        self.process = None
        self._ecs = None
        self.env = self._environment()

    # --- process control -------------------------------------------------------------

    def _environment(self):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and not k.startswith("SKIFF_")
        }
        env.update(
            AWS_SHARED_CREDENTIALS_FILE=str(self.credentials_file),
            AWS_CONFIG_FILE=str(self.state_dir / "aws-config-none"),
            AWS_PROFILE="skiff",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            SKIFF_ENDPOINT=self.endpoint,
            AWS_PAGER="",
            NO_COLOR="1",
            RUST_LOG=os.environ.get("RUST_LOG", "info,hickory_server=warn"),
        )
        return env

    @property
    def credentials_file(self):
        return self.state_dir / "credentials"

    def start(self, timeout=30.0):
        """Starts the server and waits until its port answers."""
        assert self.process is None or self.process.poll() is not None
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                str(SKIFF),
                "server",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--state-dir",
                str(self.state_dir),
                "--bridge",
                self.bridge,
                "--subnet",
                self.subnet,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"skiff server exited with {self.process.returncode} before answering:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return self
            time.sleep(0.05)
        self.process.kill()
        self.process.wait()
        raise RuntimeError(
            f"skiff server did not answer on {self.endpoint} within {timeout}s:\n"
            + self.log_tail()
        )

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill9(self):
        """Kills the server the hard way; its tasks' supervisors must survive."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout=30.0):
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"skiff server ignored SIGTERM for {timeout}s")

    def restart(self):
        """Starts the server again on the same state dir, port, bridge and subnet."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self._ecs = None
        return self.start()

    # --- clients ---------------------------------------------------------------------

    def credentials(self):
        parser = configparser.ConfigParser()
        parser.read(self.credentials_file)
        section = parser["skiff"]
        return section["aws_access_key_id"], section["aws_secret_access_key"]

    @property
    def ecs(self):
        """A boto3 ECS client for this server (no retries: errors surface at once)."""
        if self._ecs is None:
            key, secret = self.credentials()
            self._ecs = self.boto_client(key, secret)
        return self._ecs

    def boto_client(self, key, secret):
        """A boto3 ECS client whose every successful response is checked against the
        operation's output shape in botocore's model."""
        client = boto3.session.Session().client(
            "ecs",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                retries={"mode": "standard", "max_attempts": 1},
                read_timeout=120,
            ),
        )
        client.meta.events.register("after-call.ecs", check_response_shape)
        return client

    def aws(self, *args, check=True, timeout=300, service="ecs"):
        """Runs `aws SERVICE ARGS` against the server; `.json` is the parsed output."""
        completed = subprocess.run(
            ["aws", "--endpoint-url", self.endpoint, "--output", "json", service, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = Result(completed)
        if check and result.returncode != 0:
            raise AssertionError(f"aws {service} {' '.join(args)} failed: {result}")
        return result

    def query_client(self, service, secret=None):
        """A boto3 client for a Query-protocol service (`ec2`, `elbv2`) of this server,
        whose every parsed response is checked against botocore's output shape."""
        key, real_secret = self.credentials()
        client = boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret or real_secret,
            config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}),
        )
        # botocore emits `after-call.<hyphenized service id>`, e.g.
        # `elastic-load-balancing-v2` for elbv2: register on exactly that name.
        service_id = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"after-call.{service_id}", check_parsed_shape)
        return client

    def skiff(self, *args, timeout=120):
        """Runs the `skiff` CLI against the server (exit code not checked)."""
        completed = subprocess.run(
            [str(SKIFF), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(completed)

    def skiff_popen(self, *args):
        """Starts the `skiff` CLI in the background (stdout and stderr piped)."""
        return subprocess.Popen(
            [str(SKIFF), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    # --- task helpers ----------------------------------------------------------------

    def register(self, family, containers, **kwargs):
        """Registers a FARGATE task definition; returns its ARN."""
        response = self.ecs.register_task_definition(
            **fargate_definition(family, containers, **kwargs)
        )
        return response["taskDefinition"]["taskDefinitionArn"]

    def create_service(self, name, definition, desired, cluster="default", **kwargs):
        """CreateService of a FARGATE service; returns the service."""
        return self.ecs.create_service(
            cluster=cluster,
            serviceName=name,
            taskDefinition=definition,
            desiredCount=desired,
            launchType="FARGATE",
            **kwargs,
        )["service"]

    def run(self, definition, cluster="default", count=1, **kwargs):
        """RunTask; returns the tasks."""
        response = self.ecs.run_task(
            cluster=cluster,
            taskDefinition=definition,
            count=count,
            launchType="FARGATE",
            **kwargs,
        )
        assert response["failures"] == [], response["failures"]
        assert len(response["tasks"]) == count
        return response["tasks"]

    def run_command(self, command, family=None, **kwargs):
        """Runs one busybox container `sh -c command`; returns the task."""
        family = family or f"cmd-{os.urandom(4).hex()}"
        arn = self.register(family, [container("main", command)], **kwargs)
        return self.run(arn)[0]

    def describe(self, task, cluster="default"):
        response = self.ecs.describe_tasks(cluster=cluster, tasks=[task_id(task)])
        assert response["failures"] == [], response["failures"]
        return response["tasks"][0]

    def wait_status(self, tasks, status, cluster="default", timeout=60.0):
        """Waits until every task's lastStatus is `status` (or past it); returns them."""
        ids = [task_id(t) for t in tasks]
        order = [
            "PROVISIONING",
            "PENDING",
            "ACTIVATING",
            "RUNNING",
            "DEACTIVATING",
            "STOPPING",
            "DEPROVISIONING",
            "STOPPED",
        ]
        wanted = order.index(status)

        def reached():
            described = []
            for chunk in range(0, len(ids), 100):
                response = self.ecs.describe_tasks(
                    cluster=cluster, tasks=ids[chunk : chunk + 100]
                )
                assert response["failures"] == [], response["failures"]
                described += response["tasks"]
            if all(order.index(t["lastStatus"]) >= wanted for t in described):
                return described
            return None

        return wait_until(reached, timeout=timeout, interval=0.2, message=f"tasks {status}")

    def wait_stopped(self, tasks, **kwargs):
        return self.wait_status(tasks, "STOPPED", **kwargs)

    def logs(self, task, *extra):
        """`skiff logs TASK` output (checked)."""
        result = self.skiff("logs", task_id(task), *extra)
        assert result.returncode == 0, result
        return result

    def load_image(self, archive):
        result = self.skiff("image", "load", str(archive))
        assert result.returncode == 0, result
        return result

    # --- teardown --------------------------------------------------------------------

    def all_task_ids(self):
        """Every task the server knows, in every cluster (ACTIVE clusters only)."""
        ids = set()
        clusters = self.ecs.get_paginator("list_clusters").paginate().build_full_result()
        for cluster_arn in clusters["clusterArns"]:
            for desired in ("RUNNING", "STOPPED"):
                pages = self.ecs.get_paginator("list_tasks").paginate(
                    cluster=cluster_arn, desiredStatus=desired
                )
                for arn in pages.build_full_result()["taskArns"]:
                    ids.add((cluster_arn, task_id(arn)))
        return ids

    def delete_all_services(self):
        """Deletes every service (with force), so that none replaces the tasks that
        teardown stops."""
        clusters = self.ecs.get_paginator("list_clusters").paginate().build_full_result()
        for cluster_arn in clusters["clusterArns"]:
            pages = self.ecs.get_paginator("list_services").paginate(cluster=cluster_arn)
            for arn in pages.build_full_result()["serviceArns"]:
                with contextlib.suppress(self.ecs.exceptions.ClientError):
                    self.ecs.delete_service(cluster=cluster_arn, service=arn, force=True)

    def stop_all_tasks(self, timeout=120.0):
        """Stops every task through the API and waits until all are STOPPED."""
        for cluster_arn, tid in self.all_task_ids():
            with contextlib.suppress(self.ecs.exceptions.ClientError):
                self.ecs.stop_task(cluster=cluster_arn, task=tid, reason="test teardown")
        tasks = self.all_task_ids()
        by_cluster = {}
        for cluster_arn, tid in tasks:
            by_cluster.setdefault(cluster_arn, []).append(tid)
        for cluster_arn, ids in by_cluster.items():
            self.wait_stopped(ids, cluster=cluster_arn, timeout=timeout)
        return {tid for _, tid in tasks}

    def close(self):
        """Stops the tasks, the server, then checks and removes every leftover."""
        problems = []
        task_ids = set()
        if self.process is not None and self.process.poll() is None:
            try:
                self.delete_all_services()
                task_ids |= self.stop_all_tasks()
            except Exception as error:  # noqa: BLE001 - reported below, clean-up goes on
                problems.append(f"stopping the tasks through the API failed: {error!r}")
            code = self.stop()
            if code not in (0, None):
                problems.append(f"skiff server exited with {code} on SIGTERM")
        task_ids |= self._task_ids_on_disk()
        leaks = find_leftovers(task_ids, self.state_dir)
        remove_leftovers(task_ids, self.state_dir, leaks)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._port_lock.release()
        if leaks:
            problems.append("task resources leaked: " + "; ".join(leaks))
        if problems:
            raise AssertionError(
                "\n".join(problems) + "\n--- server log ---\n" + self.log_tail()
            )
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()

    def _task_ids_on_disk(self):
        ids = set()
        for root in (self.state_dir / "agent" / "tasks", self.state_dir / "sandboxes"):
            if root.is_dir():
                ids |= {p.name for p in root.iterdir() if TASK_ID.match(p.name)}
        return ids


def check_parsed_shape(parsed, model, **_):
    """Validates a parsed Query-protocol response against botocore's output shape."""
    if model.output_shape is None or "Error" in parsed:
        return
    body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
    report = ParamValidator().validate(body, model.output_shape)
    if report.has_errors():
        raise AssertionError(
            f"the {model.name} response does not match botocore's model:\n"
            + report.generate_report()
        )


def check_response_shape(http_response, model, **_):
    """Validates a raw ECS response body against botocore's output shape: unknown
    members, wrong types (a number where the model has a string...) and out-of-range
    values fail the test. botocore's parser alone would let most of them through."""
    if http_response.status_code != 200 or model.output_shape is None:
        return
    body = json.loads(http_response.content or b"{}")
    report = ParamValidator().validate(body, model.output_shape)
    if report.has_errors():
        raise AssertionError(
            f"the {model.name} response does not match botocore's model:\n"
            + report.generate_report()
        )


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def images():
    """Busybox image archives built once: an OCI layout and a `docker save` variant."""
    directory = Path(tempfile.mkdtemp(prefix="skimg", dir="/tmp"))
    oci = directory / "busybox-oci.tar"
    docker = directory / "busybox-docker.tar"
    for out, name, extra in ((oci, IMAGE, []), (docker, DOCKER_IMAGE, ["--docker"])):
        subprocess.run([str(TESTKIT), "busybox", str(out), name, *extra], check=True)
    yield {"oci": oci, "docker": docker}
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running_server(images, extra_args=()):
    """A started server with busybox loaded. `extra_args` are more server flags, or a
    function of the (not yet started) server returning them, for flags derived from its
    port."""
    server = Server()
    server.extra_args += [
        str(arg) for arg in (extra_args(server) if callable(extra_args) else extra_args)
    ]
    try:
        server.start()
        server.load_image(images["oci"])
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(images):
    """A server shared by one test file's tests, with the busybox image loaded."""
    with running_server(images) as s:
        yield s


@pytest.fixture
def fresh_server(images):
    """A server of the test's own (for restarts and leak checks), busybox loaded."""
    with running_server(images) as s:
        yield s


@pytest.fixture
def unique():
    """A short unique name for families, clusters and tokens."""
    return f"t{os.urandom(5).hex()}"


@pytest.fixture(scope="module")
def elbv2(server):
    """A boto3 ELBv2 client for the module's server (responses checked against botocore)."""
    return server.query_client("elbv2")


@pytest.fixture
def listener_port():
    """A free loopback port for a load balancer listener."""
    lock = PortLock()
    yield lock.port
    lock.release()
