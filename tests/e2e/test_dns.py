"""DNS inside tasks: a task's resolv.conf names the agent's resolver on the task's gateway
with the cluster's search domain, its hosts file names the task, and
`<service>.<cluster>.local` resolves to exactly the addresses of the service's running
tasks, following the service as it scales and surviving a server crash; a name without a
dot is a service of the task's own cluster. Every name asked is a service name or another
name under `.local`, which the resolver answers itself: no query leaves the host."""

import re

from conftest import container, wait_until
from test_metadata import address_of

# Runs `{command}` once a second, each round framed so that a reader of the log can tell
# a complete one; stops at once on SIGTERM.
PROBE = (
    "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"begin $i\"; {command}; "
    'echo "end $i"; sleep 1 & wait; done'
)
# An HTTP request for `nc` to send (busybox-static's `wget` segfaults in the test image).
HTTP_GET = r"printf 'GET / HTTP/1.0\r\n\r\n'"
# A service task serving its own name over HTTP on port 80.
WEB = (
    "trap 'exit 0' TERM; mkdir -p /www && echo \"hello from $HOSTNAME\" > /www/index.html"
    " && httpd -f -p 80 -h /www & wait"
)


def gateway(server):
    return f"{server.subnet_prefix}.1"


def nslookup_answer(output):
    """What busybox `nslookup` printed: "NXDOMAIN", or the set of addresses listed after
    the server's own lines (the first `Name:` line starts the answers)."""
    if "NXDOMAIN" in output:
        return "NXDOMAIN"
    _, _, answers = output.partition("\nName:")
    return frozenset(re.findall(r"^Address:\s*(\d+\.\d+\.\d+\.\d+)\s*$", answers, re.M))


def rounds(server, task):
    """The output of each complete round of the probe, in order."""
    return re.findall(r"^begin \d+\n(.*?)^end \d+$", server.logs(task).stdout, re.S | re.M)


def last_round(server, task):
    """The output of the probe's last complete round, or None before the first."""
    done = rounds(server, task)
    return done[-1] if done else None


def running_addresses(server, cluster, service, count):
    """The addresses of the service's tasks once exactly `count` of them run."""
    arns = server.ecs.list_tasks(cluster=cluster, serviceName=service, desiredStatus="RUNNING")[
        "taskArns"
    ]
    if len(arns) != count:
        return None
    tasks = server.ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
    if any(t["lastStatus"] != "RUNNING" for t in tasks):
        return None
    return frozenset(address_of(t) for t in tasks)


def web_service(server, unique):
    """A cluster named `unique` with service `web` of one task; returns the cluster."""
    server.ecs.create_cluster(clusterName=unique)
    web = server.register(f"{unique}-web", [container("web", WEB)])
    server.create_service("web", web, 1, cluster=unique)
    return unique


def web_running(server, cluster, count=1):
    """The addresses of service `web`'s tasks once exactly `count` of them run."""
    return wait_until(
        lambda: running_addresses(server, cluster, "web", count),
        timeout=120,
        interval=0.5,
        message=f"{count} web tasks running",
    )


def start_probe(server, cluster, command):
    """Runs `command` in a loop (see PROBE) in a task of `cluster`; returns the task."""
    probe = server.register(
        f"{cluster}-probe", [container("probe", PROBE.format(command=command))]
    )
    [task] = server.run(probe, cluster=cluster)
    return task


def test_resolv_conf_and_hosts_name_the_resolver_and_the_task(server, unique):
    task = server.run_command("cat /etc/resolv.conf /etc/hosts /etc/hostname", family=unique)
    [stopped] = server.wait_stopped([task])
    assert stopped["containers"][0]["exitCode"] == 0, server.logs(task).stderr
    lines = server.logs(task).stdout.splitlines()
    address = address_of(stopped)
    hostname = f"ip-{address.replace('.', '-')}"
    assert lines[:2] == [f"nameserver {gateway(server)}", "search default.local"]
    assert "127.0.0.1\tlocalhost" in lines
    assert f"{address}\t{hostname}.ec2.internal {hostname}" in lines
    assert lines[-1] == f"{hostname}.ec2.internal"


def test_a_name_under_local_that_is_no_service_does_not_exist(server, unique):
    task = server.run_command(f"nslookup {unique}.default.local", family=unique)
    server.wait_stopped([task])
    output = server.logs(task).stdout
    assert nslookup_answer(output) == "NXDOMAIN", output


def test_service_names_follow_scaling(server, unique):
    cluster = web_service(server, unique)
    probe_task = start_probe(server, cluster, f"nslookup web.{cluster}.local")

    for count in (1, 3, 1):
        server.ecs.update_service(cluster=cluster, service="web", desiredCount=count)
        expected = web_running(server, cluster, count)

        def answered():
            output = last_round(server, probe_task)
            return output is not None and nslookup_answer(output) == expected

        wait_until(
            answered,
            timeout=60,
            interval=0.5,
            message=f"web.{cluster}.local to resolve to {sorted(expected)}",
        )


def test_a_short_name_reaches_the_service_of_the_tasks_cluster(server, unique):
    cluster = web_service(server, unique)
    [address] = web_running(server, cluster)
    probe_task = start_probe(server, cluster, f"{HTTP_GET} | nc -w 2 web 80")
    expected = f"hello from ip-{address.replace('.', '-')}.ec2.internal"
    wait_until(
        lambda: expected in (last_round(server, probe_task) or "").splitlines(),
        timeout=60,
        interval=0.5,
        message=f"http://web/ to answer {expected!r}",
    )


def test_names_resolve_again_after_the_server_restarts(fresh_server, unique):
    server = fresh_server
    cluster = web_service(server, unique)
    expected = web_running(server, cluster)
    probe_task = start_probe(server, cluster, f"nslookup web.{cluster}.local")

    def answered_since(first):
        return any(nslookup_answer(r) == expected for r in rounds(server, probe_task)[first:])

    wait_until(lambda: answered_since(0), timeout=60, interval=0.5, message="a first answer")
    server.kill9()
    server.restart()
    # Rounds completed from here on asked the resolver of the restarted agent.
    restarted = len(rounds(server, probe_task))
    wait_until(
        lambda: answered_since(restarted + 1),
        timeout=60,
        interval=0.5,
        message="an answer from the restarted resolver",
    )
