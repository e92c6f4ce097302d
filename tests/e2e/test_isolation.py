"""Isolation: tasks cannot see each other's processes or files, memory limits are
enforced with ECS's OutOfMemoryError, and containers get Docker's default capabilities
with no_new_privs."""

from conftest import container

# Docker's default capability set (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
# SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP).
DOCKER_DEFAULT_CAPS = 0x00000000A80425FB
CAP_SYS_PTRACE = 1 << 19


def status_field(text, name):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in {text!r}")


def test_tasks_cannot_see_each_others_processes(server, unique):
    # The marker is in task A's command line: a `ps` that can see A's shell shows it.
    marker = f"{unique}-secret"
    holder = server.run_command(f"trap 'exit 0' TERM; ps -o args; echo {marker} >/dev/null; sleep 600 & wait")
    server.wait_status([holder], "RUNNING")
    peeker = server.run_command("ps -o pid,args")
    [stopped] = server.wait_stopped([peeker])
    assert stopped["containers"][0]["exitCode"] == 0
    output = server.logs(peeker).stdout
    assert marker not in output
    pids = [line.split()[0] for line in output.splitlines()[1:]]
    assert pids[0] == "1", output
    assert len(pids) <= 2, f"the task sees processes that are not its own:\n{output}"

    # Positive control: the holder's own `ps` shows its command line with the marker.
    server.ecs.stop_task(task=holder["taskArn"])
    server.wait_stopped([holder])
    assert marker in server.logs(holder).stdout


def test_tasks_cannot_see_each_others_files(server, unique):
    marker = f"marker-{unique}"
    writer = server.run_command(
        f"trap 'exit 0' TERM; echo secret > /tmp/{marker}; echo written; sleep 600 & wait"
    )
    server.wait_status([writer], "RUNNING")
    searcher = server.run_command(
        f"find / -name '{marker}*' 2>/dev/null; echo searched; "
        f"echo mine > /tmp/{marker}-own; find / -name '{marker}*' 2>/dev/null"
    )
    server.wait_stopped([searcher])
    output = server.logs(searcher).stdout.splitlines()
    # The search works (it finds the searcher's own file) but not the writer's.
    assert output == ["searched", f"/tmp/{marker}-own"], output
    assert server.logs(writer).stdout == "written\n"
    server.ecs.stop_task(task=writer["taskArn"])
    server.wait_stopped([writer])


def test_memory_limit_kills_with_out_of_memory_error(server, unique):
    # busybox `tail` keeps the last "line" of /dev/zero in memory: it grows until killed.
    definition = server.register(
        unique, [container("hog", "exec /bin/busybox tail /dev/zero")], memory="512"
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task], timeout=120)
    [hog] = stopped["containers"]
    assert hog["exitCode"] == 137, hog
    assert hog["reason"].startswith("OutOfMemoryError"), hog
    assert stopped["stopCode"] == "EssentialContainerExited"


def test_an_oom_killed_child_is_reported_with_the_real_exit_code(server, unique):
    definition = server.register(
        unique,
        [container("main", "/bin/busybox tail /dev/zero; echo survived; exit 3")],
        memory="512",
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task], timeout=120)
    [main] = stopped["containers"]
    assert main["exitCode"] == 3, main
    assert main["reason"].startswith("OutOfMemoryError"), main
    assert server.logs(task).stdout == "survived\n"


def test_a_task_below_its_memory_limit_is_not_killed(server):
    task = server.run_command("head -c 100m /dev/zero | /bin/busybox tail > /dev/null; echo survived")
    [stopped] = server.wait_stopped([task], timeout=120)
    assert stopped["containers"][0]["exitCode"] == 0
    assert "reason" not in stopped["containers"][0]
    assert server.logs(task).stdout == "survived\n"


def test_capabilities_and_no_new_privs(server, unique):
    task = server.run_command("cat /proc/self/status")
    server.wait_stopped([task])
    status = server.logs(task).stdout
    assert int(status_field(status, "CapEff"), 16) == DOCKER_DEFAULT_CAPS
    assert int(status_field(status, "CapBnd"), 16) == DOCKER_DEFAULT_CAPS
    assert status_field(status, "NoNewPrivs") == "1"
    assert status_field(status, "Seccomp") == "2", "a seccomp filter is installed"

    definition = server.register(
        unique,
        [
            container(
                "main",
                "cat /proc/self/status",
                linuxParameters={"capabilities": {"add": ["SYS_PTRACE"]}},
            )
        ],
    )
    [traced] = server.run(definition)
    server.wait_stopped([traced])
    status = server.logs(traced).stdout
    assert int(status_field(status, "CapEff"), 16) == DOCKER_DEFAULT_CAPS | CAP_SYS_PTRACE


def test_a_non_root_user_has_no_effective_capabilities(server, unique):
    definition = server.register(
        unique, [container("main", "cat /proc/self/status", user="65534:65534")]
    )
    [task] = server.run(definition)
    server.wait_stopped([task])
    status = server.logs(task).stdout
    assert int(status_field(status, "CapEff"), 16) == 0
    assert status_field(status, "Uid").split()[0] == "65534"
