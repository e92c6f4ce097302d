"""Security groups enforced on real traffic between tasks: same group, source groups,
CIDRs, port ranges, egress rules, rule and membership changes on running tasks, and
address or MAC spoofing, with the stock EC2 API to set them up.

Servers are busybox `httpd` tasks listening on several ports; probes are tasks that try
each server port with `nc` until it reaches the expected state (or give up) and print
what they saw, so a rule change that has not reached the kernel yet shows as a wrong
answer, never as a hang."""

import contextlib
import json
import os
import subprocess
import tempfile
import uuid

import pytest

from conftest import LONG_RUNNING, container, task_id, wait_until

PORTS = (8080, 8081, 9090)
SERVE = (
    "mkdir -p /tmp/www; echo ok > /tmp/www/index.html; trap 'exit 0' TERM; "
    + " ".join(f"/bin/busybox httpd -f -p {port} -h /tmp/www &" for port in PORTS)
    + " wait"
)
UDP_PORT = 7000


@pytest.fixture(scope="module")
def ec2(server):
    return server.query_client("ec2")


@pytest.fixture(scope="module")
def subnet_id(ec2):
    [subnet] = ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    return subnet["SubnetId"]


@pytest.fixture(scope="module")
def definitions(server):
    return {
        "serve": server.register(f"sg-serve-{uuid.uuid4().hex[:6]}", [container("web", SERVE)]),
        "idle": server.register(f"sg-idle-{uuid.uuid4().hex[:6]}", [container("idle", LONG_RUNNING)]),
    }


def group(ec2, name):
    """A new security group (EC2's defaults: no ingress, all egress); returns its id."""
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    return ec2.create_security_group(GroupName=unique, Description=name)["GroupId"]


def tcp(low, high=None, groups=(), cidrs=()):
    return {
        "IpProtocol": "tcp",
        "FromPort": low,
        "ToPort": high if high is not None else low,
        "UserIdGroupPairs": [{"GroupId": g} for g in groups],
        "IpRanges": [{"CidrIp": c} for c in cidrs],
    }


def run_in(server, definition, subnet_id, *groups, command=None):
    overrides = {}
    if command is not None:
        overrides = {"containerOverrides": [{"name": "main", "command": ["sh", "-c", command]}]}
    [task] = server.run(
        definition,
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet_id], "securityGroups": list(groups)}
        },
        overrides=overrides,
    )
    return task


def address_of(task):
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    return details["privateIPv4Address"]


def start_server(server, definitions, subnet_id, *groups):
    task = run_in(server, definitions["serve"], subnet_id, *groups)
    [running] = server.wait_status([task], "RUNNING")
    return address_of(running)


def probe(server, subnet_id, groups, expected):
    """Runs a probe task in `groups` that tries each `address:port` until it is in the
    expected state ("open" or "closed", a few seconds at most); returns what it saw."""
    lines = []
    for (address, port), state in expected.items():
        lines.append(
            f"i=0; while :; do "
            f"if echo | nc -w 1 {address} {port} >/dev/null 2>&1; then s=open; else s=closed; fi; "
            f'[ "$s" = {state} ] || [ $i -ge 10 ] && break; i=$((i+1)); sleep 0.3; done; '
            f'echo "{address}:{port} $s"'
        )
    definition = server.register(
        f"sg-probe-{uuid.uuid4().hex[:6]}", [container("main", "; ".join(lines))]
    )
    task = run_in(server, definition, subnet_id, *groups)
    [stopped] = server.wait_stopped([task], timeout=120)
    assert stopped["containers"][0]["exitCode"] == 0, stopped
    seen = {}
    for line in server.logs(task).stdout.splitlines():
        target, state = line.rsplit(" ", 1)
        address, port = target.split(":")
        seen[(address, int(port))] = state
    return seen


def test_the_default_group_admits_its_members_only(server, ec2, subnet_id, definitions):
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    [default] = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"]
    # Without a networkConfiguration, tasks are in the default group.
    [task] = server.run(definitions["serve"])
    [running] = server.wait_status([task], "RUNNING")
    web = address_of(running)
    expected = {(web, port): "open" for port in PORTS}
    assert probe(server, subnet_id, [default["GroupId"]], expected) == expected
    outsider = group(ec2, "outsider")
    expected = {(web, 8080): "closed"}
    assert probe(server, subnet_id, [outsider], expected) == expected


def test_source_groups_cidrs_and_port_ranges(server, ec2, subnet_id, definitions):
    web, lb, other = group(ec2, "web"), group(ec2, "lb"), group(ec2, "other")
    ec2.authorize_security_group_ingress(
        GroupId=web,
        IpPermissions=[tcp(8080, 8081, groups=[lb]), tcp(9090, cidrs=[server.subnet])],
    )
    address = start_server(server, definitions, subnet_id, web)
    from_lb = {(address, 8080): "open", (address, 8081): "open", (address, 9090): "open"}
    assert probe(server, subnet_id, [lb], from_lb) == from_lb
    # Not in lb: only the CIDR rule's port.
    from_other = {(address, 8080): "closed", (address, 8081): "closed", (address, 9090): "open"}
    assert probe(server, subnet_id, [other], from_other) == from_other
    # A probe in two groups gets the union of what admits either.
    assert probe(server, subnet_id, [other, lb], from_lb) == from_lb


def test_egress_rules_limit_what_a_task_may_open(server, ec2, subnet_id, definitions):
    open_to_all = group(ec2, "open")
    ec2.authorize_security_group_ingress(
        GroupId=open_to_all, IpPermissions=[tcp(0, 65535, cidrs=[server.subnet])]
    )
    address = start_server(server, definitions, subnet_id, open_to_all)
    narrow = group(ec2, "narrow")
    ec2.revoke_security_group_egress(
        GroupId=narrow,
        IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    ec2.authorize_security_group_egress(
        GroupId=narrow, IpPermissions=[tcp(9090, cidrs=[f"{address}/32"])]
    )
    expected = {(address, 8080): "closed", (address, 9090): "open"}
    assert probe(server, subnet_id, [narrow], expected) == expected


def test_rule_changes_reach_running_tasks(server, ec2, subnet_id, definitions):
    web, client = group(ec2, "web"), group(ec2, "client")
    address = start_server(server, definitions, subnet_id, web)
    closed = {(address, 8080): "closed"}
    assert probe(server, subnet_id, [client], closed) == closed
    permission = tcp(8080, groups=[client])
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[permission])
    opened = {(address, 8080): "open"}
    assert probe(server, subnet_id, [client], opened) == opened
    ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[permission])
    assert probe(server, subnet_id, [client], closed) == closed


def test_a_running_task_joins_and_leaves_source_groups_as_tasks_come_and_go(
    server, ec2, subnet_id, definitions
):
    web, client = group(ec2, "web"), group(ec2, "client")
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[tcp(8080, groups=[client])])
    address = start_server(server, definitions, subnet_id, web)
    # A long-running client, started after the server: the server's rules admit it
    # once it is a member of `client`, without the server's rules being rewritten.
    watcher = run_in(
        server,
        definitions["idle"],
        subnet_id,
        client,
    )
    server.wait_status([watcher], "RUNNING")
    netns = f"/run/netns/skiff-{task_id(watcher)}"

    def reaches():
        fetch = f"import urllib.request; urllib.request.urlopen('http://{address}:8080/', timeout=1)"
        result = subprocess.run(
            ["ip", "netns", "exec", f"skiff-{task_id(watcher)}", "python3", "-c", fetch],
            capture_output=True,
        )
        return result.returncode == 0

    assert wait_until(reaches, timeout=10, message="the client member to be admitted")
    member = address_of(watcher)
    assert member in group_members(server, client)
    # Stopped, its address leaves the group's set (it may go to a task outside the group);
    # the set stays, since the web task's rules name the group.
    server.ecs.stop_task(task=watcher["taskArn"])
    server.wait_stopped([watcher])
    assert not os.path.exists(netns)
    wait_until(
        lambda: member not in group_members(server, client),
        timeout=10,
        message="the stopped task's address to leave the group's set",
    )


def group_members(server, group_id):
    """The addresses in a group's member set on the server's bridge."""
    listing = subprocess.run(
        ["nft", "-j", "list", "set", "ip", f"skiff_{server.bridge}", group_id],
        capture_output=True, text=True, check=True,
    ).stdout
    [found] = [o["set"] for o in json.loads(listing)["nftables"] if "set" in o]
    return set(found.get("elem", []))


@contextlib.contextmanager
def udp_listener(netns):
    """Receives UDP on port UDP_PORT inside a task's namespace (busybox has no UDP
    server); yields a function returning what arrived so far, one line per datagram."""
    with tempfile.NamedTemporaryFile("r") as log:
        script = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0', {UDP_PORT}))\n"
            f"out = open({log.name!r}, 'a')\n"
            "while True:\n"
            "    data, peer = s.recvfrom(2048)\n"
            "    out.write(f'{peer[0]} {data.decode().strip()}\\n'); out.flush()\n"
        )
        process = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", script])
        try:
            yield lambda: open(log.name).read()
        finally:
            process.kill()
            process.wait()


def send_forged(netns, source_ip, destination, payload, source_mac=None):
    """Sends one UDP datagram from inside a task's namespace with a forged IPv4 source
    (and optionally Ethernet source): what a task holding CAP_NET_RAW could send."""
    script = f"""
import socket, struct
src, dst, payload = {source_ip!r}, {destination!r}, {payload!r}.encode()
def checksum(data):
    if len(data) % 2: data += b"\\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
udp = struct.pack("!HHHH", 40000, {UDP_PORT}, 8 + len(payload), 0) + payload
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
mac = {source_mac!r}
if mac is None:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(header + udp, (dst, 0))
else:
    # Task MACs are 0a:58 and the task's address.
    frame = b"\\x0a\\x58" + socket.inet_aton(dst) + bytes.fromhex(mac.replace(":", "")) + b"\\x08\\x00"
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    s.send(frame + header + udp)
"""
    sent = subprocess.run(
        ["ip", "netns", "exec", netns, "python3", "-c", script], capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr


def test_tasks_cannot_spoof_addresses_or_macs(server, ec2, subnet_id, definitions):
    # The listener admits UDP from one address only, which no task has: a sender that
    # could forge it would get through the security group.
    trusted = f"{server.subnet_prefix}.250"
    listening = group(ec2, "udp")
    ec2.authorize_security_group_ingress(
        GroupId=listening,
        IpPermissions=[{"IpProtocol": "udp", "FromPort": UDP_PORT, "ToPort": UDP_PORT,
                        "IpRanges": [{"CidrIp": f"{trusted}/32"}]}],
    )
    listener = run_in(server, definitions["idle"], subnet_id, listening)
    [listener] = server.wait_status([listener], "RUNNING")
    target = address_of(listener)
    sender_group = group(ec2, "sender")
    sender = run_in(server, definitions["idle"], subnet_id, sender_group)
    [sender] = server.wait_status([sender], "RUNNING")
    netns = f"skiff-{task_id(sender)}"

    with udp_listener(f"skiff-{task_id(listener)}") as received:
        send_forged(netns, trusted, target, "forged-ip")
        send_forged(netns, trusted, target, "forged-ip-and-mac", source_mac="0a:58:0a:00:00:99")

        # Positive control: the sender's real address, once admitted, gets through, so
        # the forged datagrams would have arrived before it had they passed.
        ec2.authorize_security_group_ingress(
            GroupId=listening,
            IpPermissions=[{"IpProtocol": "udp", "FromPort": UDP_PORT, "ToPort": UDP_PORT,
                            "UserIdGroupPairs": [{"GroupId": sender_group}]}],
        )

        def honest_arrived():
            send_forged(netns, address_of(sender), target, "honest")
            return "honest" in received()

        wait_until(honest_arrived, timeout=15, interval=0.5, message="the honest datagram")
        assert "forged" not in received(), received()
