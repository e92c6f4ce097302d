"""Services end to end: the service API's shapes and errors, the scheduler keeping the
desired count (scaling, replacing killed and unhealthy tasks), rolling deployments, the
circuit breaker's rollback, deletion, a control-plane crash mid-deployment, and the
`skiff service` CLI. Tasks use container health checks (interval 5 s, ECS's minimum) so
that a new task counts as healthy within seconds instead of ECS's 40 s default."""

import subprocess
import time

import pytest

from conftest import LONG_RUNNING, container, wait_until

CHECK = {"command": ["CMD-SHELL", "true"], "interval": 5, "timeout": 2, "retries": 2}


def checked(command=LONG_RUNNING, check=CHECK, **extra):
    """A long-running container with a passing health check."""
    return container("app", command, healthCheck=check, **extra)


def describe_service(server, name, cluster="default"):
    response = server.ecs.describe_services(cluster=cluster, services=[name])
    assert response["failures"] == [], response["failures"]
    return response["services"][0]


def service_tasks(server, name, desired="RUNNING", cluster="default"):
    arns = server.ecs.list_tasks(cluster=cluster, serviceName=name, desiredStatus=desired)[
        "taskArns"
    ]
    if not arns:
        return []
    return server.ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]


def wait_stable(server, name, timeout=120):
    """`aws ecs wait services-stable`, the waiter users run (15 s polls, so wrapped in
    our own faster poll first to keep tests short)."""

    def stable():
        service = describe_service(server, name)
        return (
            len(service["deployments"]) == 1
            and service["runningCount"] == service["desiredCount"]
            and service
        )

    return wait_until(stable, timeout=timeout, interval=0.5, message=f"service {name} stable")


def wait_rollout(server, name, state, timeout=180):
    def reached():
        service = describe_service(server, name)
        primary = service["deployments"][0]
        return primary["rolloutState"] == state and len(service["deployments"]) == 1 and service

    return wait_until(reached, timeout=timeout, interval=0.5, message=f"{name} rollout {state}")


def test_create_describe_list_and_the_aws_cli_waiter(server, unique):
    definition = server.register(unique, [checked()])
    created = server.create_service(unique, definition, 2)
    assert created["status"] == "ACTIVE"
    assert created["desiredCount"] == 2
    assert created["launchType"] == "FARGATE"
    assert created["deploymentConfiguration"]["maximumPercent"] == 200
    assert created["deploymentConfiguration"]["minimumHealthyPercent"] == 100
    [deployment] = created["deployments"]
    assert deployment["status"] == "PRIMARY"
    assert deployment["rolloutState"] == "IN_PROGRESS"
    assert deployment["id"].startswith("ecs-svc/")

    server.aws("wait", "services-stable", "--services", unique, timeout=200)
    service = describe_service(server, unique)
    assert service["runningCount"] == 2
    assert any("has started 2 tasks" in e["message"] for e in service["events"])
    tasks = service_tasks(server, unique)
    assert len(tasks) == 2
    for task in tasks:
        assert task["group"] == f"service:{unique}"
        assert task["startedBy"] == deployment["id"]
    arns = server.aws("list-services").json["serviceArns"]
    assert created["serviceArn"] in arns
    cluster = server.ecs.describe_clusters(clusters=["default"])["clusters"][0]
    assert cluster["activeServicesCount"] >= 1

    # The rollout completes once both tasks pass their health checks.
    completed = wait_rollout(server, unique, "COMPLETED")
    assert any("deployment completed" in e["message"] for e in completed["events"])
    assert any("has reached a steady state" in e["message"] for e in completed["events"])


def test_scaling_up_and_down(server, unique):
    definition = server.register(unique, [checked()])
    server.create_service(unique, definition, 1)
    wait_stable(server, unique)
    server.ecs.update_service(cluster="default", service=unique, desiredCount=3)
    wait_stable(server, unique)
    assert len(service_tasks(server, unique)) == 3

    server.ecs.update_service(cluster="default", service=unique, desiredCount=1)
    wait_stable(server, unique)
    wait_until(lambda: len(service_tasks(server, unique)) == 1, message="scaled down to 1")
    stopped = service_tasks(server, unique, desired="STOPPED")
    assert len(stopped) == 2
    for task in stopped:
        assert task["stopCode"] == "ServiceSchedulerInitiated"
        assert "desired count was lowered" in task["stoppedReason"]


def test_a_task_killed_from_outside_is_replaced(server, unique):
    marker = f"svc-{unique}"
    definition = server.register(unique, [checked(f"{LONG_RUNNING} # {marker}")])
    server.create_service(unique, definition, 1)
    wait_stable(server, unique)
    [victim] = service_tasks(server, unique)
    subprocess.run(["pkill", "-KILL", "-f", marker], check=True)
    server.wait_stopped([victim])

    def replaced():
        tasks = service_tasks(server, unique)
        fresh = [t for t in tasks if t["taskArn"] != victim["taskArn"]]
        return len(fresh) == 1 and fresh[0]["lastStatus"] == "RUNNING" and fresh
    wait_until(replaced, timeout=60, message="a replacement task RUNNING")
    [dead] = [t for t in service_tasks(server, unique, desired="STOPPED")]
    assert dead["stopCode"] == "EssentialContainerExited"
    assert dead["containers"][0]["exitCode"] == 137


def test_a_user_stopped_task_is_replaced(server, unique):
    definition = server.register(unique, [checked()])
    server.create_service(unique, definition, 1)
    wait_stable(server, unique)
    [task] = service_tasks(server, unique)
    server.ecs.stop_task(cluster="default", task=task["taskArn"], reason="testing")
    wait_until(
        lambda: [t for t in service_tasks(server, unique) if t["taskArn"] != task["taskArn"]],
        message="a replacement",
    )
    service = describe_service(server, unique)
    assert service["deployments"][0]["failedTasks"] == 0


def test_an_unhealthy_container_gets_its_task_replaced(server, unique):
    # Healthy at first; the file the check looks for disappears after 6 s.
    command = f"touch /tmp/ok; (sleep 6; rm /tmp/ok) & {LONG_RUNNING}"
    check = dict(CHECK, command=["CMD-SHELL", "test -f /tmp/ok"])
    definition = server.register(unique, [checked(command, check)])
    server.create_service(unique, definition, 1)
    [first] = wait_until(lambda: service_tasks(server, unique), message="a task")

    def replaced():
        stopped = service_tasks(server, unique, desired="STOPPED")
        return [t for t in stopped if t["taskArn"] == first["taskArn"]]

    [sick] = wait_until(replaced, timeout=90, message="the unhealthy task stopped")
    assert sick["stopCode"] == "ServiceSchedulerInitiated"
    assert sick["stoppedReason"] == "Task failed container health checks"
    assert sick["healthStatus"] == "UNHEALTHY"
    service = describe_service(server, unique)
    assert any("failed container health checks" in e["message"] for e in service["events"])
    wait_until(lambda: service_tasks(server, unique), message="a replacement")


def test_rolling_deployment_to_a_new_revision(server, unique):
    first = server.register(unique, [checked()])
    server.create_service(unique, first, 2)
    wait_rollout(server, unique, "COMPLETED")
    old = {t["taskArn"] for t in service_tasks(server, unique)}

    second = server.register(unique, [checked(environment=[{"name": "V", "value": "2"}])])
    updated = server.ecs.update_service(cluster="default", service=unique, taskDefinition=second)
    deployments = updated["service"]["deployments"]
    assert [d["status"] for d in deployments] == ["PRIMARY", "ACTIVE"]
    assert deployments[0]["taskDefinition"] == second

    # Never more than maximumPercent (200%) of the tasks at once.
    peak = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        peak = max(peak, len(service_tasks(server, unique)))
        service = describe_service(server, unique)
        if len(service["deployments"]) == 1 and service["deployments"][0]["rolloutState"] == "COMPLETED":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the deployment did not complete: {service['deployments']}")
    assert peak <= 4
    tasks = service_tasks(server, unique)
    assert len(tasks) == 2
    assert all(t["taskDefinitionArn"] == second for t in tasks)
    retired = [t for t in service_tasks(server, unique, desired="STOPPED") if t["taskArn"] in old]
    assert len(retired) == 2
    assert all(t["stopCode"] == "ServiceSchedulerInitiated" for t in retired)


def test_circuit_breaker_rolls_back_a_broken_revision(server, unique):
    good = server.register(unique, [checked()])
    server.create_service(
        unique,
        good,
        5,
        deploymentConfiguration={
            "deploymentCircuitBreaker": {"enable": True, "rollback": True},
            "maximumPercent": 200,
            "minimumHealthyPercent": 100,
        },
    )
    wait_rollout(server, unique, "COMPLETED")
    broken = server.register(unique, [checked("echo broken; exit 1")])
    server.ecs.update_service(cluster="default", service=unique, taskDefinition=broken)

    def rolled_back():
        service = describe_service(server, unique)
        events = " ".join(e["message"] for e in service["events"])
        return "deployment failed" in events and "rolling back" in events and service

    service = wait_until(rolled_back, timeout=120, message="the circuit breaker")
    assert service["taskDefinition"] == good
    service = wait_rollout(server, unique, "COMPLETED")
    assert service["deployments"][0]["taskDefinition"] == good
    assert all(t["taskDefinitionArn"] == good for t in service_tasks(server, unique))


def test_delete_drains_then_goes_inactive(server, unique):
    definition = server.register(unique, [checked()])
    server.create_service(unique, definition, 2)
    wait_stable(server, unique)
    with pytest.raises(server.ecs.exceptions.InvalidParameterException, match="scaled above 0"):
        server.ecs.delete_service(cluster="default", service=unique)
    deleted = server.ecs.delete_service(cluster="default", service=unique, force=True)
    assert deleted["service"]["status"] == "DRAINING"
    server.aws("wait", "services-inactive", "--services", unique, timeout=200)
    assert service_tasks(server, unique) == []
    assert describe_service(server, unique)["status"] == "INACTIVE"
    with pytest.raises(server.ecs.exceptions.ServiceNotActiveException):
        server.ecs.update_service(cluster="default", service=unique, desiredCount=1)


def test_errors_name_what_is_wrong(server, unique):
    definition = server.register(unique, [checked()])
    with pytest.raises(server.ecs.exceptions.ServiceNotFoundException):
        server.ecs.update_service(cluster="default", service=f"{unique}-nope", desiredCount=1)
    missing = server.ecs.describe_services(cluster="default", services=[f"{unique}-nope"])
    assert missing["failures"][0]["reason"] == "MISSING"
    with pytest.raises(server.ecs.exceptions.InvalidParameterException, match="maximumPercent"):
        server.create_service(unique, definition, 1, deploymentConfiguration={"maximumPercent": 50})
    with pytest.raises(server.ecs.exceptions.InvalidParameterException, match="container port 9999"):
        server.create_service(
            unique,
            definition,
            1,
            loadBalancers=[
                {
                    "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/x/1",
                    "containerName": "app",
                    "containerPort": 9999,
                }
            ],
        )
    server.create_service(unique, definition, 0)
    with pytest.raises(server.ecs.exceptions.InvalidParameterException, match="not idempotent"):
        server.create_service(unique, definition, 3)
    with pytest.raises(server.ecs.exceptions.ClusterNotFoundException):
        server.ecs.create_service(
            cluster=f"{unique}-none", serviceName=unique, taskDefinition=definition, desiredCount=1
        )


def test_control_plane_crash_mid_deployment(fresh_server, unique):
    server = fresh_server
    first = server.register(unique, [checked()])
    server.create_service(unique, first, 2)
    wait_rollout(server, unique, "COMPLETED")
    second = server.register(unique, [checked(environment=[{"name": "V", "value": "2"}])])
    server.ecs.update_service(cluster="default", service=unique, taskDefinition=second)
    wait_until(
        lambda: any(t["taskDefinitionArn"] == second for t in service_tasks(server, unique)),
        message="the deployment under way",
    )
    server.kill9()
    server.start()
    service = wait_rollout(server, unique, "COMPLETED")
    assert service["taskDefinition"] == second
    tasks = service_tasks(server, unique)
    assert len(tasks) == 2 and all(t["taskDefinitionArn"] == second for t in tasks)
    # No duplicates were started: every task ever started belongs to the two
    # deployments, at most desired + maximumPercent's surge of them.
    everything = tasks + service_tasks(server, unique, desired="STOPPED")
    assert len(everything) <= 4, "\n".join(
        [f"{t['taskArn']} {t['lastStatus']} {t.get('stoppedReason')}" for t in everything]
        + ["--- server log ---", server.log_tail(200)]
    )


def test_the_skiff_service_cli(server, unique):
    definition = server.register(unique, [checked()])
    created = server.skiff("service", "create", unique, "-t", definition, "-n", "1")
    assert created.returncode == 0, created
    assert unique in created.stdout
    wait_stable(server, unique)
    listed = server.skiff("service", "ls")
    assert listed.returncode == 0 and unique in listed.stdout, listed
    scaled = server.skiff("service", "scale", unique, "2")
    assert scaled.returncode == 0, scaled
    wait_stable(server, unique)
    second = server.register(unique, [checked(environment=[{"name": "V", "value": "2"}])])
    deployed = server.skiff("service", "deploy", unique, "-t", second, timeout=240)
    assert deployed.returncode == 0, deployed
    assert "completed" in deployed.stdout
    described = server.skiff("service", "describe", unique, "-o", "json")
    assert described.json["taskDefinition"] == second
    refused = server.skiff("service", "rm", unique)
    assert refused.returncode != 0 and "--force" in refused.stderr, refused
    removed = server.skiff("service", "rm", unique, "--force")
    assert removed.returncode == 0, removed
