"""boto3 against a real skiffd (in the nested test host): task definitions, tasks through their
lifecycle with waiters, shapes as botocore parses them, paginators, tags, tenants apart,
capacity failures, and authentication errors."""

import datetime
from unittest import mock

import boto3
import botocore.config
from botocore.exceptions import ClientError

from common import ACCOUNT_A, ENDPOINT, KEY_A, KEY_B, REGION, WAIT, behind, check, main

ONE_TRY = botocore.config.Config(retries={"total_max_attempts": 1})
SLEEPER = {
    "name": "app",
    "image": "busybox:latest",
    "essential": True,
    "command": ["sh", "-c", "echo up; trap 'exit 0' TERM; sleep 1000 & wait"],
}


def client(key=KEY_A, config=None):
    return boto3.client(
        "ecs",
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=config,
    )


def error_of(call):
    try:
        call()
    except ClientError as e:
        err = e.response["Error"]
        return err["Code"], err["Message"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("the call did not fail")


def register(a, family, tags=()):
    return a.register_task_definition(
        family=family,
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[SLEEPER],
        tags=list(tags),
    )["taskDefinition"]


def describe(a, arn):
    return a.describe_tasks(cluster="default", tasks=[arn], include=["TAGS"])["tasks"][0]


def run():
    a, b = client(), client(KEY_B)
    check(a.list_clusters()["clusterArns"] == [f"arn:aws:ecs:{REGION}:{ACCOUNT_A}:cluster/default"], "ListClusters: the default cluster")

    td = register(a, "boto-sleeper", [{"key": "suite", "value": "boto3"}])
    td_arn = f"arn:aws:ecs:{REGION}:{ACCOUNT_A}:task-definition/boto-sleeper:1"
    check(td["taskDefinitionArn"] == td_arn and td["status"] == "ACTIVE", "RegisterTaskDefinition", td)
    check(isinstance(td["registeredAt"], datetime.datetime), "registeredAt parses as a time", td)
    d = a.describe_task_definition(taskDefinition="boto-sleeper", include=["TAGS"])
    check(d["tags"] == [{"key": "suite", "value": "boto3"}] and d["taskDefinition"]["cpu"] == "256", "DescribeTaskDefinition with TAGS", d)

    started = a.run_task(
        cluster="default",
        taskDefinition="boto-sleeper",
        launchType="FARGATE",
        count=1,
        startedBy="boto3-suite",
        networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-12345"], "assignPublicIp": "DISABLED"}},
        tags=[{"key": "run", "value": "1"}],
    )
    check(started["failures"] == [] and len(started["tasks"]) == 1, "RunTask", started)
    arn = started["tasks"][0]["taskArn"]
    task_id = arn.rsplit("/", 1)[1]
    check(arn == f"arn:aws:ecs:{REGION}:{ACCOUNT_A}:task/default/{task_id}", "task ARN in ECS's form", arn)
    a.get_waiter("tasks_running").wait(cluster="default", tasks=[arn], WaiterConfig=WAIT)
    t = describe(a, arn)
    check(t["lastStatus"] == "RUNNING" and t["desiredStatus"] == "RUNNING", "waiter tasks_running: RUNNING", t)
    check((t["cpu"], t["memory"], t["launchType"], t["startedBy"]) == ("256", "512", "FARGATE", "boto3-suite"), "task sizes and launch type", t)
    check(isinstance(t["createdAt"], datetime.datetime) and t["startedAt"] >= t["createdAt"], "timestamps parse and order", t)
    check(t["containers"][0]["name"] == "app" and t["containers"][0]["lastStatus"] == "RUNNING", "container status", t)
    check(t["tags"] == [{"key": "run", "value": "1"}] and t["taskDefinitionArn"] == td_arn, "tags and definition ARN", t)
    cluster = a.describe_clusters(clusters=["default"])["clusters"][0]
    check(cluster["runningTasksCount"] >= 1 and cluster["status"] == "ACTIVE", "DescribeClusters counts the running task", cluster)

    # Tenant b sees nothing of tenant a's.
    seen = b.describe_tasks(tasks=[arn, task_id])
    check(seen["tasks"] == [] and [f["reason"] for f in seen["failures"]] == ["MISSING", "MISSING"], "tenant b: a's task is MISSING", seen)
    check(arn not in b.list_tasks()["taskArns"], "tenant b: ListTasks without a's task")
    check(error_of(lambda: b.stop_task(task=arn))[0] == "AccessDeniedException", "tenant b: StopTask of a's ARN is denied")
    check(error_of(lambda: b.stop_task(task=task_id))[0] == "InvalidParameterException", "tenant b: StopTask of a's id: not found")
    check(b.describe_clusters()["clusters"][0]["runningTasksCount"] == 0, "tenant b's cluster counts only its own")
    check(describe(a, arn)["lastStatus"] == "RUNNING", "a's task untouched by b")

    stopping = a.stop_task(cluster="default", task=arn, reason="boto3 says stop")["task"]
    check(stopping["desiredStatus"] == "STOPPED", "StopTask", stopping)
    a.get_waiter("tasks_stopped").wait(tasks=[arn], WaiterConfig=WAIT)
    t = describe(a, arn)
    check(t["lastStatus"] == "STOPPED" and t["stopCode"] == "UserInitiated" and t["stoppedReason"] == "boto3 says stop", "waiter tasks_stopped: stopCode", t)
    check(t["containers"][0]["exitCode"] == 0 and isinstance(t["stoppedAt"], datetime.datetime), "the container's SIGTERM trap exited 0", t)

    three = a.run_task(taskDefinition="boto-sleeper", overrides={"containerOverrides": [{"name": "app", "command": ["sh", "-c", "exit 3"]}]})
    arn3 = three["tasks"][0]["taskArn"]
    a.get_waiter("tasks_stopped").wait(tasks=[arn3], WaiterConfig=WAIT)
    t = describe(a, arn3)
    check(t["containers"][0]["exitCode"] == 3 and t["stopCode"] == "EssentialContainerExited", "a task that exits on its own with 3", t)
    check(t["overrides"]["containerOverrides"][0]["command"] == ["sh", "-c", "exit 3"], "overrides shown", t)

    over = a.run_task(taskDefinition="boto-sleeper", count=10, overrides={"cpu": "4096", "memory": "8192"})
    check(over["tasks"] == [] and over["failures"][0]["reason"] == "RESOURCE:CPU", "RunTask over capacity: failures RESOURCE:CPU", over)

    for i in range(25):
        register(a, "boto-pages")
        register(a, f"boto-family-{i:02d}")
    # ECS matches ListTaskDefinitions' familyPrefix as the whole family name.
    pages = list(a.get_paginator("list_task_definitions").paginate(familyPrefix="boto-pages", PaginationConfig={"PageSize": 10}))
    arns = [x for p in pages for x in p["taskDefinitionArns"]]
    expected = [f"arn:aws:ecs:{REGION}:{ACCOUNT_A}:task-definition/boto-pages:{r}" for r in range(1, 26)]
    check(len(pages) == 3 and arns == expected, "ListTaskDefinitions paginator: 25 revisions in pages of 10", [len(p["taskDefinitionArns"]) for p in pages])
    desc = [x for p in a.get_paginator("list_task_definitions").paginate(familyPrefix="boto-pages", sort="DESC", PaginationConfig={"PageSize": 7}) for x in p["taskDefinitionArns"]]
    check(desc == list(reversed(expected)), "sort DESC pages the other way")
    families = [f for p in a.get_paginator("list_task_definition_families").paginate(familyPrefix="boto-family-", PaginationConfig={"PageSize": 10}) for f in p["families"]]
    check(families == [f"boto-family-{i:02d}" for i in range(25)], "ListTaskDefinitionFamilies paginator", families)
    check(b.list_task_definition_families(familyPrefix="boto-")["families"] == [], "tenant b has none of a's families")

    # 25 tasks to page through, from an image nobody can pull (a registry port nothing listens
    # on, on the nested host's loopback): real tasks, stopped by the failed pull, with no VM to
    # boot — 25 concurrent boots are what the emulated nested host handles worst.
    a.register_task_definition(family="boto-unpullable", cpu="256", memory="512",
                               containerDefinitions=[{"name": "app", "image": "127.0.0.1:5999/nothing:1"}])
    mine = []
    for n in (10, 10, 5):  # the capacity holds ten: each batch stops before the next
        batch = a.run_task(taskDefinition="boto-unpullable", count=n, startedBy="boto3-pages")
        check(batch["failures"] == [] and len(batch["tasks"]) == n, f"RunTask count={n}", batch["failures"])
        arns = [t["taskArn"] for t in batch["tasks"]]
        a.get_waiter("tasks_stopped").wait(tasks=arns, WaiterConfig=WAIT)
        mine += arns
    pages = list(a.get_paginator("list_tasks").paginate(startedBy="boto3-pages", desiredStatus="STOPPED", PaginationConfig={"PageSize": 10}))
    listed = [x for p in pages for x in p["taskArns"]]
    check(len(pages) == 3 and sorted(listed) == sorted(mine), "ListTasks paginator: 25 stopped tasks in pages of 10", [len(p["taskArns"]) for p in pages])
    ended = [t for i in range(0, 25, 10) for t in a.describe_tasks(tasks=mine[i:i + 10])["tasks"]]
    odd = [(t["taskArn"], t.get("stopCode"), t.get("stoppedReason")) for t in ended
           if t.get("stopCode") != "TaskFailedToStart" or "CannotPullContainerError" not in t.get("stoppedReason", "")]
    check(len(ended) == 25 and not odd, "the unpullable tasks stopped with TaskFailedToStart: CannotPullContainerError", odd)

    a.tag_resource(resourceArn=td_arn, tags=[{"key": "owner", "value": "qa"}])
    a.untag_resource(resourceArn=td_arn, tagKeys=["suite"])
    check(a.list_tags_for_resource(resourceArn=td_arn)["tags"] == [{"key": "owner", "value": "qa"}], "TagResource, UntagResource, ListTagsForResource")
    check(error_of(lambda: b.list_tags_for_resource(resourceArn=td_arn))[0] == "AccessDeniedException", "tenant b cannot read a's tags")

    code, message, status = error_of(client((KEY_A[0], "not-the-secret-0123456789"), ONE_TRY).list_clusters)
    check((code, status) == ("InvalidSignatureException", 403), "a wrong secret", (code, message, status))
    code, message, status = error_of(client(("AKIASKIFFNOBODY00001", KEY_A[1]), ONE_TRY).list_clusters)
    check((code, status) == ("UnrecognizedClientException", 400), "an unknown key", (code, message, status))
    with mock.patch("botocore.auth.get_current_datetime", behind(20)):
        code, message, status = error_of(client(config=ONE_TRY).list_clusters)
    check(code == "InvalidSignatureException" and message.startswith("Signature expired"), "a stale date", (code, message, status))
    code, message, _ = error_of(lambda: a.create_service(serviceName="web", taskDefinition="boto-sleeper"))
    check("CreateService" in message, "an unsupported action is named", (code, message))
    check(error_of(lambda: a.list_tasks(cluster="production"))[0] == "ClusterNotFoundException", "an unknown cluster")


if __name__ == "__main__":
    main(run)
