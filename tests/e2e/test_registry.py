"""Registry pulls end to end: real `docker-registry`s on loopback (plain HTTP, htpasswd
auth, TLS from a private CA), images pushed with skopeo, tasks run through boto3 and
the AWS CLI, images managed with the `skiff` CLI. What a pull asked the registry for is
read from the registry's access log.

The servers here load no image: everything a task runs comes from a registry, so every
blob a test expects to be downloaded is really downloaded. Each test pushes images of
its own (a busybox image carrying a unique marker file, or an OCI layout written in
Python), so tests sharing the module's server and registries do not see each other's
cache state beyond the common busybox layer.
"""

import collections
import contextlib
import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import tempfile
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import LONG_RUNNING, SKIFF, Result, Server, container, task_id
from registry_support import (
    CertificateAuthority,
    random_layer,
    running_registry,
    tar_layer,
    write_oci_layout,
)

CREDENTIALS = ("skiff", "registry-pass-1")
MIB = 1 << 20


@contextlib.contextmanager
def pull_server(*insecure, extra=()):
    """A server (no image loaded) that may reach the `insecure` registries over HTTP."""
    args = [arg for registry in insecure for arg in ("--insecure-registry", registry.host)]
    server = Server([*args, *extra])
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="module")
def workdir():
    directory = Path(tempfile.mkdtemp(prefix="skregt"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def registries(workdir):
    """plain and auth (listed as insecure), tls (CA given to the server), untrusted (TLS
    from a CA the server does not know), unlisted (plain HTTP, not listed), doomed
    (listed; a test kills it)."""
    trusted = CertificateAuthority.create(workdir / "trusted-ca", "skiff-e2e-ca")
    other = CertificateAuthority.create(workdir / "other-ca", "skiff-e2e-other-ca")
    with contextlib.ExitStack() as stack:

        def start(**kwargs):
            return stack.enter_context(running_registry(**kwargs))

        yield SimpleNamespace(
            ca=trusted,
            plain=start(),
            auth=start(credentials=CREDENTIALS),
            tls=start(ca=trusted),
            untrusted=start(ca=other),
            unlisted=start(),
            doomed=start(),
        )


@pytest.fixture(scope="module")
def puller(registries):
    """The module's server: plain, auth and doomed are insecure, the trusted CA given."""
    with pull_server(
        registries.plain,
        registries.auth,
        registries.doomed,
        extra=["--registry-ca", registries.ca.cert],
    ) as server:
        yield server


def run_image(server, image, command=LONG_RUNNING, count=1):
    """RunTask of one container running `image`; returns the tasks."""
    family = f"reg-{os.urandom(4).hex()}"
    arn = server.register(family, [container("main", command, image=image)])
    return server.run(arn, count=count)


def run_until_running(server, image, **kwargs):
    task = run_image(server, image, **kwargs)[0]
    described = server.wait_status([task], "RUNNING", timeout=120)[0]
    assert described["lastStatus"] == "RUNNING", described.get("stoppedReason")
    return described


def failed_pull(server, image):
    """Runs `image`, expects the task to fail to start on the pull; returns the reason."""
    task = run_image(server, image)[0]
    stopped = server.wait_stopped([task], timeout=120)[0]
    reason = stopped.get("stoppedReason", "")
    assert stopped.get("stopCode") == "TaskFailedToStart", stopped
    assert reason.startswith("CannotPullContainerError:"), reason
    assert image in reason, reason
    return reason


def stop(server, *tasks):
    for task in tasks:
        server.ecs.stop_task(cluster="default", task=task_id(task), reason="test done")
    server.wait_stopped(list(tasks))


def login(server, host, user, password):
    """`echo PASSWORD | skiff registry login HOST -u USER --password-stdin`."""
    completed = subprocess.run(
        [str(SKIFF), "registry", "login", host, "-u", user, "--password-stdin"],
        input=password + "\n",
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = Result(completed)
    assert result.returncode == 0, result
    return result


def run_in_terminal(server, *args, timeout=120):
    """Runs the `skiff` CLI on a pseudo-terminal (so progress bars draw); returns the
    exit code and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen(
        [str(SKIFF), *args],
        env={**server.env, "TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return code, output.decode(errors="replace")


def image_list(server):
    result = server.skiff("-o", "json", "image", "ls")
    assert result.returncode == 0, result
    return result.json["images"]


def names_in_cache(server):
    return {name for image in image_list(server) for name in image["names"]}


# --- pulling and running ----------------------------------------------------------------


def test_a_task_runs_the_registry_image_with_its_digest_and_pull_times(
    puller, registries, workdir, unique
):
    plain = registries.plain
    repository = f"team/{unique}"
    digest = plain.push_busybox(workdir, f"{repository}:1", unique)
    image = f"{plain.host}/{repository}:1"
    arn = puller.register(f"reg-{unique}", [container("main", LONG_RUNNING, image=image)])
    ran = puller.aws("run-task", "--task-definition", arn, "--launch-type", "FARGATE").json
    assert ran["failures"] == [], ran
    tid = task_id(ran["tasks"][0])
    puller.wait_status([tid], "RUNNING", timeout=120)

    described = puller.aws("describe-tasks", "--tasks", tid).json["tasks"][0]
    assert described["lastStatus"] == "RUNNING", described.get("stoppedReason")
    assert described["containers"][0]["image"] == image
    assert described["containers"][0]["imageDigest"] == digest
    assert (
        described["createdAt"]
        <= described["pullStartedAt"]
        <= described["pullStoppedAt"]
        <= described["startedAt"]
    ), described
    stop(puller, tid)


def test_a_second_task_downloads_no_blob_and_the_cache_holds_one_copy(
    puller, registries, workdir, unique
):
    plain = registries.plain
    repository = f"team/{unique}"
    digest = plain.push_busybox(workdir, f"{repository}:1", unique)
    blobs = plain.blob_digests(repository, "1")
    image = f"{plain.host}/{repository}:1"

    first = run_until_running(puller, image)
    downloads = plain.blob_downloads(repository)
    # The busybox layer may be cached by an earlier test; this image's own are not.
    assert set(blobs[:1] + blobs[-1:]) <= set(downloads) <= set(blobs), downloads
    assert len(downloads) == len(set(downloads)), downloads
    seen = len(plain.requests())

    second = run_until_running(puller, image)
    # oci-client probes `/v2/` before each request to an anonymous registry (it
    # caches only tokens, and anonymous access yields none); that is no manifest check.
    later = [(r.method, r.path) for r in plain.requests()[seen:] if r.path != "/v2/"]
    assert later == [
        ("HEAD", f"/v2/{repository}/manifests/1")
    ], "a cached tag costs one manifest check and nothing else"
    assert second["containers"][0]["imageDigest"] == digest

    copies = [i for i in image_list(puller) if i["digest"] == digest]
    assert len(copies) == 1, copies
    assert sorted(copies[0]["names"]) == sorted([image, f"{plain.host}/{repository}@{digest}"])
    listed = puller.skiff("image", "ls")
    assert listed.returncode == 0, listed
    assert sum(image in line for line in listed.stdout.splitlines()) == 1, listed.stdout
    stop(puller, first, second)


def test_a_moved_tag_runs_the_new_image(puller, registries, workdir, unique):
    plain = registries.plain
    repository = f"team/{unique}"
    image = f"{plain.host}/{repository}:1"
    runs = []
    for marker in (f"{unique}-first", f"{unique}-second"):
        digest = plain.push_busybox(workdir, f"{repository}:1", marker)
        task = run_image(puller, image, command="cat /etc/image-marker")[0]
        stopped = puller.wait_stopped([task], timeout=120)[0]
        assert stopped["containers"][0].get("exitCode") == 0, stopped
        assert stopped["containers"][0]["imageDigest"] == digest
        assert puller.logs(task).stdout.split()[-1] == marker
        runs.append(digest)
    assert runs[0] != runs[1]


def test_a_digest_reference_needs_no_request_once_cached(puller, registries, workdir, unique):
    plain = registries.plain
    repository = f"team/{unique}"
    digest = plain.push_busybox(workdir, f"{repository}:1", unique)
    first = run_until_running(puller, f"{plain.host}/{repository}:1")
    seen = len(plain.requests())

    pinned = f"{plain.host}/{repository}@{digest}"
    second = run_until_running(puller, pinned)
    assert second["containers"][0]["imageDigest"] == digest
    assert plain.requests()[seen:] == [], "a cached digest must not cost any request"
    stop(puller, first, second)


# --- pulls that fail --------------------------------------------------------------------


def test_an_unknown_tag_fails_the_task(puller, registries, workdir, unique):
    plain = registries.plain
    plain.push_busybox(workdir, f"team/{unique}:1", unique)
    reason = failed_pull(puller, f"{plain.host}/team/{unique}:nope")
    assert "not found" in reason, reason


def test_an_unknown_repository_fails_the_task(puller, registries):
    reason = failed_pull(puller, f"{registries.plain.host}/team/never-pushed:1")
    assert "not found" in reason, reason


def test_an_unreachable_registry_fails_the_task(puller, registries, workdir, unique):
    doomed = registries.doomed
    doomed.push_busybox(workdir, f"team/{unique}:1", unique)
    doomed.kill()
    reason = failed_pull(puller, f"{doomed.host}/team/{unique}:1")
    assert f"cannot reach registry {doomed.host}" in reason, reason


def test_a_plain_http_registry_must_be_listed_as_insecure(puller, registries, workdir, unique):
    unlisted = registries.unlisted
    unlisted.push_busybox(workdir, f"team/{unique}:1", unique)
    reason = failed_pull(puller, f"{unlisted.host}/team/{unique}:1")
    assert f"--insecure-registry {unlisted.host}" in reason, reason


def test_a_registry_with_auth_needs_a_login(puller, registries, workdir, unique):
    auth = registries.auth
    digest = auth.push_busybox(workdir, f"team/{unique}:1", unique)
    image = f"{auth.host}/team/{unique}:1"
    reason = failed_pull(puller, image)
    assert f"skiff registry login {auth.host}" in reason, reason

    user, password = CREDENTIALS
    login(puller, auth.host, user, "wrong-" + password)
    reason = failed_pull(puller, image)
    assert f"refused the credentials of {user}" in reason, reason
    assert f"skiff registry login {auth.host} -u {user} --password-stdin" in reason, reason

    assert "Login stored" in login(puller, auth.host, user, password).stdout
    task = run_until_running(puller, image)
    assert task["containers"][0]["imageDigest"] == digest
    stop(puller, task)


def test_a_tls_registry_is_trusted_through_registry_ca(puller, registries, workdir, unique):
    digest = registries.tls.push_busybox(workdir, f"team/{unique}:1", unique)
    task = run_until_running(puller, f"{registries.tls.host}/team/{unique}:1")
    assert task["containers"][0]["imageDigest"] == digest
    stop(puller, task)

    untrusted = registries.untrusted
    untrusted.push_busybox(workdir, f"team/{unique}:1", unique)
    reason = failed_pull(puller, f"{untrusted.host}/team/{unique}:1")
    assert "TLS" in reason and "--registry-ca" in reason, reason


def test_concurrent_tasks_download_each_blob_once(registries, workdir, unique):
    plain = registries.plain
    repository = f"team/{unique}"
    plain.push_busybox(workdir, f"{repository}:1", unique)
    with pull_server(plain) as server:
        tasks = run_image(server, f"{plain.host}/{repository}:1", count=10)
        described = server.wait_status(tasks, "RUNNING", timeout=180)
        assert [t["lastStatus"] for t in described] == ["RUNNING"] * 10, [
            t.get("stoppedReason") for t in described
        ]
        downloads = collections.Counter(plain.blob_downloads(repository))
        assert downloads == {blob: 1 for blob in plain.blob_digests(repository, "1")}


# --- hostile and broken content -----------------------------------------------------------


@pytest.mark.parametrize("attack", ["parent-path", "symlink-then-write"])
def test_a_malicious_layer_is_refused_and_writes_nothing_outside(
    puller, registries, workdir, unique, attack
):
    outside = Path(tempfile.mkdtemp(prefix=f"skiff-escape-{unique}-"))
    try:
        if attack == "parent-path":
            target = outside / "escaped"
            bad_entry = "../" * 32 + str(target).lstrip("/")
            entries = [("dir", "etc"), ("file", bad_entry, b"escaped")]
        else:
            target = outside / "pwned"
            bad_entry = "evil/pwned"
            entries = [("symlink", "evil", str(outside)), ("file", bad_entry, b"pwned")]
        layout = write_oci_layout(workdir / unique / attack, "1", [tar_layer(entries)])
        registries.plain.push_layout(layout, "1", f"evil/{unique}:{attack}")

        reason = failed_pull(puller, f"{registries.plain.host}/evil/{unique}:{attack}")
        assert f"`{bad_entry}`" in reason, reason
        assert not target.exists()
        assert list(outside.iterdir()) == []
        store = puller.state_dir / "agent" / "images"
        assert (store / "layers").is_dir(), f"no image store at {store}"
        leftovers = list(store.rglob(".tmp-*"))
        assert leftovers == [], leftovers
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_a_corrupted_blob_fails_verification(puller, registries, workdir, unique):
    plain = registries.plain
    repository = f"team/{unique}"
    plain.push_busybox(workdir, f"{repository}:1", unique)
    own_layer = plain.blob_digests(repository, "1")[-1]
    data = plain.blob_file(own_layer)
    data.write_bytes(os.urandom(data.stat().st_size))

    reason = failed_pull(puller, f"{plain.host}/{repository}:1")
    assert f"blob {own_layer} failed verification" in reason, reason
    assert "hashes to sha256:" in reason, reason
    assert own_layer not in {i["digest"] for i in image_list(puller)}


# --- the image CLI and the cache ----------------------------------------------------------


def test_image_pull_rm_and_prune(puller, registries, workdir, unique):
    plain = registries.plain
    repository = f"team/{unique}"
    digest = plain.push_busybox(workdir, f"{repository}:1", unique)
    own_layer = plain.blob_digests(repository, "1")[-1]
    image = f"{plain.host}/{repository}:1"

    code, output = run_in_terminal(puller, "image", "pull", image)
    assert code == 0, output
    assert f"Pulled {digest}" in output, output
    assert own_layer[7:19] in output, f"no progress line for layer {own_layer}:\n{output}"
    assert image in names_in_cache(puller)

    removed = puller.skiff("image", "rm", image)
    assert removed.returncode == 0, removed
    assert f"Untagged {image}" in removed.stdout, removed
    assert image not in names_in_cache(puller)
    pruned = puller.skiff("-o", "json", "image", "prune")
    assert pruned.returncode == 0, pruned
    assert pruned.json["bytesFreed"] > 0 and pruned.json["blobsRemoved"] > 0, pruned.json
    # Freed for real: pulling again downloads the image's own layer again.
    before = plain.blob_downloads(repository).count(own_layer)
    again = puller.skiff("image", "pull", image)
    assert again.returncode == 0, again
    assert plain.blob_downloads(repository).count(own_layer) == before + 1


def test_prune_keeps_the_image_of_a_running_task(puller, registries, workdir, unique):
    plain = registries.plain
    repository = f"team/{unique}"
    digest = plain.push_busybox(workdir, f"{repository}:1", unique)
    image = f"{plain.host}/{repository}:1"
    task = run_until_running(puller, image)

    assert puller.skiff("image", "rm", image).returncode == 0
    pruned = puller.skiff("-o", "json", "image", "prune")
    assert pruned.returncode == 0, pruned
    assert digest not in pruned.json["imagesRemoved"]
    assert puller.describe(task)["lastStatus"] == "RUNNING"
    # Everything the image needs is still stored: running it by digest asks nothing.
    seen = len(plain.requests())
    second = run_until_running(puller, f"{plain.host}/{repository}@{digest}")
    assert plain.requests()[seen:] == []
    stop(puller, task, second)


def test_the_cache_size_evicts_the_least_recently_used_unused_image(
    registries, workdir, unique
):
    plain = registries.plain
    # busybox (A, about 3 MB stored) plus three 8 MB images (a 4 MiB file: blob and
    # unpacked copy): A+B+C fits in 22 MiB, A+B+C+D does not, A+B+D does.
    refs = {}
    for name in ("b", "c", "d"):
        layout = write_oci_layout(workdir / unique / name, "1", [random_layer(4 * MIB)])
        plain.push_layout(layout, "1", f"cache/{unique}-{name}:1")
        refs[name] = f"{plain.host}/cache/{unique}-{name}:1"
    plain.push_busybox(workdir, f"cache/{unique}-a:1", unique)
    refs["a"] = f"{plain.host}/cache/{unique}-a:1"

    with pull_server(plain, extra=["--image-cache-size", "22M"]) as server:
        task = run_until_running(server, refs["a"])  # A: in use, and the oldest
        for name in ("b", "c", "b", "d"):  # B is used again after C: C is the LRU one
            pulled = server.skiff("image", "pull", refs[name])
            assert pulled.returncode == 0, pulled
        cached = names_in_cache(server)
        assert {refs["a"], refs["b"], refs["d"]} <= cached, cached
        assert refs["c"] not in cached, cached
        assert server.describe(task)["lastStatus"] == "RUNNING"


def test_an_image_larger_than_the_cache_still_runs(registries, workdir, unique):
    """The image a task just pulled is not evicted before the task pins it, even
    when it alone is over the cache size."""
    plain = registries.plain
    plain.push_busybox(workdir, f"cache/{unique}:1", unique)
    image = f"{plain.host}/cache/{unique}:1"
    with pull_server(plain, extra=["--image-cache-size", "1M"]) as server:
        task = run_until_running(server, image)
        assert image in names_in_cache(server)
        stop(server, task)
