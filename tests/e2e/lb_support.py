"""Helpers shared by the load balancer tests: an ELBv2 client whose responses are
checked against botocore's model, the AWS CLI, a web server task command, and requests
through a listener."""

import subprocess
import urllib.error
import urllib.request

import boto3
import botocore.config
from botocore.validate import ParamValidator

from conftest import REGION, Result

WEB = (
    "mkdir -p /tmp/www; echo ok > /tmp/www/health; "
    'echo "hello from $(hostname)" > /tmp/www/index.html; '
    "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /tmp/www & wait"
)


def check_parsed_shape(parsed, model, **_):
    """Validates a parsed ELBv2 response against botocore's output shape."""
    if model.output_shape is None or "Error" in parsed:
        return
    body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
    report = ParamValidator().validate(body, model.output_shape)
    if report.has_errors():
        raise AssertionError(
            f"the {model.name} response does not match botocore's model:\n"
            + report.generate_report()
        )


def elbv2_client(server, secret=None):
    key, real_secret = server.credentials()
    client = boto3.session.Session().client(
        "elbv2",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret or real_secret,
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    client.meta.events.register("after-call.elasticloadbalancing", check_parsed_shape)
    return client


def aws_elbv2(server, *args, check=True):
    """Runs `aws elbv2 ARGS` against the server; `.json` is the parsed output."""
    completed = subprocess.run(
        ["aws", "--endpoint-url", server.endpoint, "--output", "json", "elbv2", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = Result(completed)
    if check and result.returncode != 0:
        raise AssertionError(f"aws elbv2 {' '.join(args)} failed: {result}")
    return result


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
