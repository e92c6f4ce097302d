"""Services behind the built-in load balancer: tasks registered as targets when RUNNING,
healthy only once their target is, drained before they stop, and a rolling deployment
under continuous load (wrk) that loses no request."""

import re
import signal
import subprocess
import time

from conftest import container, wait_until
from lb_support import WEB, fetch, health_states
from test_services import describe_service, service_tasks, wait_rollout


def web_service_setup(server, elbv2, unique, port, delay=5):
    """A target group (HTTP health checks every 5 s), a load balancer and a listener on
    `port`; returns the target group ARN."""
    group = elbv2.create_target_group(
        Name=unique,
        Protocol="HTTP",
        Port=8080,
        TargetType="ip",
        VpcId="vpc-skiff",
        HealthCheckPath="/health",
        HealthCheckIntervalSeconds=5,
        HealthCheckTimeoutSeconds=2,
        HealthyThresholdCount=2,
        UnhealthyThresholdCount=2,
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(
        TargetGroupArn=group,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}],
    )
    balancer = elbv2.create_load_balancer(Name=unique, Subnets=["subnet-skiff-default"])[
        "LoadBalancers"
    ][0]["LoadBalancerArn"]
    elbv2.create_listener(
        LoadBalancerArn=balancer,
        Protocol="HTTP",
        Port=port,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group}],
    )
    return group


def web_definition(server, family, version):
    command = WEB.replace("hello from", f"version {version} from")
    web = container("web", command, portMappings=[{"containerPort": 8080, "protocol": "tcp"}])
    return server.register(family, [web])


def create_web_service(server, name, definition, group, desired):
    return server.create_service(
        name,
        definition,
        desired,
        loadBalancers=[{"targetGroupArn": group, "containerName": "web", "containerPort": 8080}],
        healthCheckGracePeriodSeconds=30,
    )


def task_address(task):
    return task["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]


def test_service_tasks_become_targets_and_traffic_reaches_them(server, elbv2, unique, listener_port):
    group = web_service_setup(server, elbv2, unique, listener_port)
    definition = web_definition(server, unique, 1)
    create_web_service(server, unique, definition, group, 2)
    service = wait_rollout(server, unique, "COMPLETED")
    assert any("registered" in e["message"] and group in e["message"] for e in service["events"])
    tasks = service_tasks(server, unique)
    states = health_states(elbv2, group)
    assert states == {(task_address(t), 8080): "healthy" for t in tasks}
    bodies = {fetch(listener_port)[1] for _ in range(8)}
    assert all(body.startswith("version 1 from") for body in bodies), bodies
    assert len(bodies) == 2, "round robin reaches both tasks"

    # Scaling down drains the stopped task's target before the task stops.
    server.ecs.update_service(cluster="default", service=unique, desiredCount=1)
    stopping = wait_until(
        lambda: service_tasks(server, unique, desired="STOPPED"), message="a task stopping"
    )
    address = task_address(stopping[0])
    wait_until(
        lambda: (address, 8080) not in health_states(elbv2, group), message="its target removed"
    )
    [stopped] = server.wait_stopped(stopping)
    assert stopped["stopCode"] == "ServiceSchedulerInitiated"
    events = " ".join(e["message"] for e in describe_service(server, unique)["events"])
    assert "deregistered 1 targets" in events


def wrk_failures(output):
    """Requests, and non-2xx responses plus socket errors, from wrk's report."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    failed = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        failed += int(non_2xx.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        failed += sum(int(n) for n in errors.groups())
    return requests, failed


def test_rolling_deployment_under_load_loses_no_request(server, elbv2, unique, listener_port):
    group = web_service_setup(server, elbv2, unique, listener_port, delay=3)
    create_web_service(server, unique, web_definition(server, unique, 1), group, 2)
    wait_rollout(server, unique, "COMPLETED")
    second = web_definition(server, unique, 2)

    # Bounded: 2 connections, at most 240 s; stopped with SIGINT once the rollout is done.
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c2", "-d240s", "--timeout", "5s", f"http://127.0.0.1:{listener_port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(2)
        server.ecs.update_service(cluster="default", service=unique, taskDefinition=second)
        service = wait_rollout(server, unique, "COMPLETED", timeout=200)
        time.sleep(2)
    finally:
        wrk.send_signal(signal.SIGINT)
        output, _ = wrk.communicate(timeout=30)
    assert service["taskDefinition"] == second
    requests, failed = wrk_failures(output)
    assert requests > 100, output
    assert failed == 0, output
    assert fetch(listener_port)[1].startswith("version 2 from")
