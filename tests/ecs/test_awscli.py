"""The AWS CLI against a real skiffd (in the nested test host), as a user scripts ECS: register
from a JSON file, run-task, the waiters, describe, stop-task, a task that exits 3, pagination,
tenants apart, capacity failures and authentication errors."""

import json
import os
import subprocess
import sys

from common import ACCOUNT_A, ENDPOINT, KEY_A, KEY_B, REGION, check, main

HERE = os.path.dirname(os.path.abspath(__file__))
AWS = os.path.join(os.path.dirname(sys.executable), "aws")
# The CLI with its clock 20 minutes behind (a stale X-Amz-Date).
STALE_CLI = (
    "import sys, botocore.auth, common; botocore.auth.get_current_datetime = common.behind(20); "
    "from awscli.clidriver import main; sys.exit(main())"
)


def aws(*args, key=KEY_A, stale=False, fail=False):
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=key[0],
        AWS_SECRET_ACCESS_KEY=key[1],
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_MAX_ATTEMPTS="1",
        PYTHONPATH=HERE,
    )
    program = [sys.executable, "-c", STALE_CLI] if stale else [AWS]
    done = subprocess.run(
        program + ["--endpoint-url", ENDPOINT, "--output", "json", "ecs", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if fail:
        check(done.returncode != 0, f"aws ecs {args[0]} fails", done.stdout)
        return done.stderr
    if done.returncode != 0:
        raise AssertionError(f"aws ecs {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def describe(arn, key=KEY_A):
    return aws("describe-tasks", "--cluster", "default", "--tasks", arn, key=key)


def run():
    out = aws("register-task-definition", "--cli-input-json", f"file://{HERE}/taskdef.json")
    td = out["taskDefinition"]
    check(td["family"] == "cli-sleeper" and td["revision"] == 1 and td["requiresCompatibilities"] == ["FARGATE"], "register-task-definition from a JSON file", td)

    out = aws("run-task", "--cluster", "default", "--task-definition", "cli-sleeper", "--count", "1",
              "--launch-type", "FARGATE", "--network-configuration", "awsvpcConfiguration={subnets=[subnet-1],assignPublicIp=DISABLED}")
    arn = out["tasks"][0]["taskArn"]
    check(arn.startswith(f"arn:aws:ecs:{REGION}:{ACCOUNT_A}:task/default/") and out["failures"] == [], "run-task", out)
    aws("wait", "tasks-running", "--cluster", "default", "--tasks", arn)
    t = describe(arn)["tasks"][0]
    check(t["lastStatus"] == "RUNNING" and t["cpu"] == "256" and t["memory"] == "512", "wait tasks-running; describe-tasks", t)
    # AWS CLI v1 prints times as the epoch seconds it received.
    check(isinstance(t["createdAt"], float) and t["startedAt"] >= t["createdAt"], "the CLI prints times", t)
    check(t["containers"][0]["lastStatus"] == "RUNNING" and t["containers"][0]["name"] == "app", "and containers", t)

    seen = describe(arn, key=KEY_B)
    check(seen["tasks"] == [] and seen["failures"][0]["reason"] == "MISSING", "tenant b: a's task is MISSING", seen)
    err = aws("stop-task", "--task", arn, key=KEY_B, fail=True)
    check("AccessDeniedException" in err, "tenant b cannot stop a's task", err)
    check(aws("list-tasks", key=KEY_B)["taskArns"] == [], "tenant b lists no tasks")

    aws("stop-task", "--cluster", "default", "--task", arn, "--reason", "cli says stop")
    aws("wait", "tasks-stopped", "--cluster", "default", "--tasks", arn)
    t = describe(arn)["tasks"][0]
    check(t["lastStatus"] == "STOPPED" and t["stopCode"] == "UserInitiated" and t["containers"][0]["exitCode"] == 0, "stop-task; wait tasks-stopped; stopCode and exitCode", t)

    overrides = json.dumps({"containerOverrides": [{"name": "app", "command": ["sh", "-c", "exit 3"]}]})
    arn3 = aws("run-task", "--task-definition", "cli-sleeper", "--overrides", overrides)["tasks"][0]["taskArn"]
    aws("wait", "tasks-stopped", "--tasks", arn3)
    t = describe(arn3)["tasks"][0]
    check(t["containers"][0]["exitCode"] == 3 and t["stopCode"] == "EssentialContainerExited", "a task that exits on its own with 3", t)

    over = aws("run-task", "--task-definition", "cli-sleeper", "--count", "10", "--overrides", json.dumps({"cpu": "4096", "memory": "8192"}))
    check(over["tasks"] == [] and over["failures"][0]["reason"] == "RESOURCE:CPU", "run-task over capacity: failures", over)

    for i in range(25):
        aws("register-task-definition", "--family", "cli-pages", "--cpu", "256", "--memory", "512",
            "--container-definitions", json.dumps([{"name": "app", "image": "busybox:latest"}]))
    # The CLI follows nextToken itself; --page-size makes it ask for 10 at a time.
    listed = aws("list-task-definitions", "--family-prefix", "cli-pages", "--page-size", "10")
    check(len(listed["taskDefinitionArns"]) == 25 and listed["taskDefinitionArns"][-1].endswith("cli-pages:25"), "list-task-definitions pages through 25", listed)
    first = aws("list-task-definitions", "--family-prefix", "cli-pages", "--max-items", "10")
    check(len(first["taskDefinitionArns"]) == 10 and first.get("NextToken"), "--max-items stops with a NextToken", first)
    families = aws("list-task-definition-families", "--family-prefix", "cli-")["families"]
    check(families == ["cli-pages", "cli-sleeper"], "list-task-definition-families", families)
    stopped = aws("list-tasks", "--desired-status", "STOPPED", "--page-size", "1")["taskArns"]
    check(arn in stopped and arn3 in stopped, "list-tasks --desired-status STOPPED, a page at a time", stopped)

    err = aws("list-clusters", key=(KEY_A[0], "not-the-secret-0123456789"), fail=True)
    check("InvalidSignatureException" in err, "a wrong secret", err)
    err = aws("list-clusters", key=("AKIASKIFFNOBODY00001", KEY_A[1]), fail=True)
    check("UnrecognizedClientException" in err, "an unknown key", err)
    err = aws("list-clusters", stale=True, fail=True)
    check("InvalidSignatureException" in err and "Signature expired" in err, "a stale date", err)
    err = aws("create-cluster", "--cluster-name", "prod", fail=True)
    check("CreateCluster" in err, "an unsupported action is named", err)


if __name__ == "__main__":
    main(run)
