"""What a task can leave on the host, and how to find and remove it.

A stopped task must leave nothing: no mount under the server's state directory, no
`/run/netns/skiff-<id>`, no host veth `sk<first 13 hex digits of the id>`, no cgroup
`skiff/<id>` in any hierarchy (v1: /sys/fs/cgroup/<controller>/skiff/<id>, v2:
/sys/fs/cgroup/skiff/<id>), no runc container `<id>-<container>`, no process whose
command line names the task (its supervisor), and no nftables chain named after it (its
security group and anti-spoofing chains `in_<id>`, `out_<id>`, `guard_<id>`)."""

import contextlib
import glob
import json
import os
import re
import signal
import subprocess

RUNC_ROOT = "/run/skiff/runc"


def mounts_under(path):
    """Mount points at or below `path`, from /proc/self/mountinfo."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                found.append(point)
    return found


def host_veths():
    output = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"^\d+: (sk[0-9a-f]{13})[@:]", output, re.MULTILINE))


def cgroup_dirs(tid):
    return glob.glob(f"/sys/fs/cgroup/*/skiff/{tid}") + glob.glob(
        f"/sys/fs/cgroup/skiff/{tid}"
    )


def runc_containers():
    result = subprocess.run(
        ["runc", "--root", RUNC_ROOT, "list", "-q"], capture_output=True, text=True
    )
    return set(result.stdout.split())


def processes_mentioning(text):
    """Pids whose command line contains `text` (like `pgrep -f`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry))
    return pids


def nft_chains():
    """The names of every nftables chain on the host, with their tables."""
    result = subprocess.run(["nft", "-j", "list", "chains"], capture_output=True, text=True)
    objects = json.loads(result.stdout or "{}").get("nftables", [])
    return [
        (o["chain"]["table"], o["chain"]["name"]) for o in objects if "chain" in o
    ]


def find_leftovers(task_ids, state_dir):
    """What the given tasks left on the host, as readable strings."""
    leaks = [f"mount {m}" for m in mounts_under(state_dir)]
    veths = host_veths()
    runc = runc_containers()
    chains = nft_chains()
    for tid in sorted(task_ids):
        leaks += [f"nft chain {name} in table {table}" for table, name in chains if tid in name]
        if os.path.exists(f"/run/netns/skiff-{tid}"):
            leaks.append(f"netns /run/netns/skiff-{tid}")
        if f"sk{tid[:13]}" in veths:
            leaks.append(f"veth sk{tid[:13]}")
        leaks += [f"cgroup {d}" for d in cgroup_dirs(tid)]
        leaks += [f"runc container {c}" for c in runc if c.startswith(tid)]
        leaks += [f"process {pid} of task {tid}" for pid in processes_mentioning(tid)]
    return leaks


def remove_leftovers(task_ids, state_dir, leaks):
    """Best-effort removal of everything `find_leftovers` can report."""
    if not leaks:
        return
    for tid in task_ids:
        for pid in processes_mentioning(tid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for c in runc_containers():
        if any(c.startswith(tid) for tid in task_ids):
            subprocess.run(["runc", "--root", RUNC_ROOT, "delete", "-f", c], capture_output=True)
    for point in sorted(mounts_under(state_dir), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    veths = host_veths()
    for tid in task_ids:
        if f"sk{tid[:13]}" in veths:
            subprocess.run(["ip", "link", "del", f"sk{tid[:13]}"], capture_output=True)
        if os.path.exists(f"/run/netns/skiff-{tid}"):
            subprocess.run(["ip", "netns", "del", f"skiff-{tid}"], capture_output=True)
        for d in cgroup_dirs(tid):
            for sub in sorted(glob.glob(f"{d}/**/", recursive=True), key=len, reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)
