"""What the ECS client sessions share: where skiffd is, the tenants' keys, checks."""

import datetime
import json
import os
import sys

ENDPOINT = os.environ["SKIFF_ECS_ENDPOINT"]
REGION = "eu-west-1"
# Tenant a's and tenant b's access keys (tests/src/skiffd.rs configures them in skiffd).
KEY_A = ("AKIASKIFFTENANTA0001", "tenant-a-secret/0123456789+abc")
KEY_B = ("AKIASKIFFTENANTB0001", "tenant-b-secret/0123456789+abc")
ACCOUNT_A = "111111111111"
ACCOUNT_B = "222222222222"
# ECS's maximum between waiter polls here: the nested host is slow.
WAIT = {"Delay": 2, "MaxAttempts": 300}


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {json.dumps(detail, default=str)}")
    print(f"ok: {what}", flush=True)


def behind(minutes):
    """A clock `minutes` behind (to sign stale requests with)."""
    return lambda: datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes)


def main(run):
    try:
        run()
    except Exception as e:  # noqa: BLE001 - any failure fails the session, with its story
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    print("session passed", flush=True)
