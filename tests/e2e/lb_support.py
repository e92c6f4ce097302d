"""Helpers shared by the load balancer tests: the AWS CLI for elbv2, a web server task
command, and requests through a listener."""

import urllib.error
import urllib.request

WEB = (
    "mkdir -p /tmp/www; echo ok > /tmp/www/health; "
    'echo "hello from $(hostname)" > /tmp/www/index.html; '
    "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /tmp/www & wait"
)


def aws_elbv2(server, *args, check=True):
    """Runs `aws elbv2 ARGS` against the server; `.json` is the parsed output."""
    return server.aws(*args, check=check, timeout=120, service="elbv2")


def fetch(port, path="/"):
    """GET through the listener: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def health_states(elbv2, tg):
    described = elbv2.describe_target_health(TargetGroupArn=tg)
    return {
        (d["Target"]["Id"], d["Target"]["Port"]): d["TargetHealth"]["State"]
        for d in described["TargetHealthDescriptions"]
    }
