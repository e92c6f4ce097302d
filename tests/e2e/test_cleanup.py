"""Clean-up: after hundreds of short tasks, nothing of them is left on the host (mounts,
network namespaces, veths, cgroups, runc containers, supervisors, firewall chains, map
elements and security group member sets) and their addresses are handed out again."""

import ipaddress
import json
import subprocess
import time

from conftest import container, task_id, wait_until
from leftovers import find_leftovers, mounts_under

BATCHES = 30  # RunTask calls of count 10: 300 tasks
IN_FLIGHT = 30  # tasks allowed to be not yet STOPPED before the next RunTask


def address_of(task):
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    return details["privateIPv4Address"]


def unfinished(server, ids):
    """The ids among `ids` whose task is not STOPPED yet."""
    remaining = []
    for start in range(0, len(ids), 100):
        response = server.ecs.describe_tasks(tasks=ids[start : start + 100])
        assert response["failures"] == [], response["failures"]
        remaining += [task_id(t) for t in response["tasks"] if t["lastStatus"] != "STOPPED"]
    return remaining


def test_hundreds_of_tasks_leave_nothing_behind(fresh_server):
    server = fresh_server
    quick = server.register(
        "cleanup-quick",
        [container("main", "echo done"), container("side", "true", essential=False)],
    )
    started = time.monotonic()
    ids, addresses, pending = [], set(), []
    for _ in range(BATCHES):
        deadline = time.monotonic() + 120
        while len(pending) > IN_FLIGHT - 10:
            assert time.monotonic() < deadline, "tasks stopped too slowly"
            time.sleep(0.2)
            pending = unfinished(server, pending)
        tasks = server.run(quick, count=10)
        ids += [task_id(t) for t in tasks]
        pending += [task_id(t) for t in tasks]
        addresses |= {address_of(t) for t in tasks}
    assert len(set(ids)) == BATCHES * 10

    wait_until(lambda: not unfinished(server, ids), timeout=120, message="every task to stop")
    stopped = []
    for start in range(0, len(ids), 100):
        stopped += server.ecs.describe_tasks(tasks=ids[start : start + 100])["tasks"]
    for task in stopped:
        assert task["stopCode"] == "EssentialContainerExited", task
        exits = {c["name"]: c.get("exitCode") for c in task["containers"]}
        assert exits["main"] == 0, task
    elapsed = time.monotonic() - started

    # Nothing is left of any of them, with the server still running.
    assert mounts_under(server.state_dir) == []
    leaks = find_leftovers(set(ids), server.state_dir)
    assert leaks == [], f"{len(leaks)} leftovers, e.g. {leaks[:5]}"

    # The bridge's firewall holds nothing of them: no task chains, no map elements, and
    # no member set of a group (no task left to name one).
    table = json.loads(
        subprocess.run(
            ["nft", "-j", "list", "table", "ip", f"skiff_{server.bridge}"],
            capture_output=True, text=True, check=True,
        ).stdout
    )["nftables"]
    chains = [o["chain"]["name"] for o in table if "chain" in o]
    assert not [c for c in chains if c.startswith(("in_", "out_"))], chains
    maps = {o["map"]["name"]: o["map"].get("elem", []) for o in table if "map" in o}
    assert maps["ingress"] == [] and maps["egress"] == [], maps
    sets = [o["set"]["name"] for o in table if "set" in o]
    assert sets == [], sets

    # Addresses were reused: far fewer were handed out than tasks ran, and a new task
    # gets the lowest one again (the first host address is the bridge's).
    assert len(addresses) <= IN_FLIGHT + 10, sorted(addresses)
    network = ipaddress.ip_network(server.subnet)
    lowest = str(list(network.hosts())[1])
    [again] = server.run(quick)
    assert address_of(again) == lowest
    server.wait_stopped([again])
    print(f"{len(ids)} tasks ran and stopped in {elapsed:.0f}s")
