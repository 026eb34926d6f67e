#!/usr/bin/env python3
"""Checks the bucket policies of infra/s3/policies (called by infra/check/run).

- Each file is a JSON IAM policy (Version 2012-10-17, Allow statements only) for one role: the
  API, the workers, the migration step.
- It names only S3 actions the code can use: those behind the SDK calls of crates/store/src
  (GetObject also covers HeadObject; PutObject covers every part of a multipart upload;
  ListBucket covers HeadBucket).
- Its resources lie in the bucket of base/configmap.yaml and every object pattern matches a key
  of the layout that crates/store/src/layout.rs builds (its `format!` prefixes), so a policy
  cannot name a place the service never writes.
- What each role must and must not be allowed, evaluated like IAM does for Allow statements
  (`*` and `?` globs on resources, `StringLike` on `s3:prefix`): the workers read inputs, key
  sets and models and write results only; the API never writes a result; the migration step
  touches models only.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path

import yaml

# One report format for every infra check (this directory is on the path when run as a script).
from validate import Report

# The SDK calls of crates/store/src and the IAM action each needs.
SDK_ACTIONS = {
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
    "head_bucket": "s3:ListBucket",
    "create_bucket": "s3:CreateBucket",
}
ROLES = ("api", "worker", "migrate")
# Sample values for the layout's placeholders (crates/store/src/layout.rs).
SAMPLES = {
    "tenant": "0b5e6c3e-8f8e-4d43-9d6b-7a1e2f3c4d5e",
    "job": "5f0c9a7e-1b2d-4e3f-8a9b-0c1d2e3f4a5b",
    "j": "5f0c9a7e-1b2d-4e3f-8a9b-0c1d2e3f4a5b",
    "keyset": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
    "k": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
    "model": "mnist-cryptonets",
    "version": "1",
}
NAMES = {"keyset": "evaluation.keys", "input": "batch.bfib", "result": "result-1.bfrb", "model": "model.onnx"}

# (action, area, kind): kind "key" is an object in the area, "prefix" a listing of it.
MUST = {
    "api": [
        ("s3:PutObject", "keyset", "key"), ("s3:PutObject", "input", "key"), ("s3:PutObject", "model", "key"),
        ("s3:AbortMultipartUpload", "keyset", "key"), ("s3:AbortMultipartUpload", "input", "key"),
        ("s3:AbortMultipartUpload", "model", "key"),
        ("s3:GetObject", "keyset", "key"), ("s3:GetObject", "input", "key"), ("s3:GetObject", "result", "key"),
        ("s3:GetObject", "model", "key"),
        ("s3:DeleteObject", "keyset", "key"), ("s3:DeleteObject", "input", "key"),
        ("s3:DeleteObject", "result", "key"), ("s3:DeleteObject", "model", "key"),
        ("s3:ListBucket", "job", "prefix"), ("s3:ListBucket", "keyset", "prefix"), ("s3:ListBucket", "model", "prefix"),
        ("s3:ListBucket", "bucket", "prefix"),
    ],
    "worker": [
        ("s3:GetObject", "input", "key"), ("s3:GetObject", "keyset", "key"), ("s3:GetObject", "model", "key"),
        ("s3:PutObject", "result", "key"), ("s3:AbortMultipartUpload", "result", "key"),
        ("s3:DeleteObject", "result", "key"), ("s3:DeleteObject", "input", "key"),
        ("s3:ListBucket", "job", "prefix"),
    ],
    "migrate": [
        ("s3:PutObject", "model", "key"), ("s3:GetObject", "model", "key"), ("s3:DeleteObject", "model", "key"),
        ("s3:ListBucket", "model", "prefix"), ("s3:ListBucket", "bucket", "prefix"),
    ],
}
MUST_NOT = {
    "api": [("s3:PutObject", "result", "key"), ("s3:CreateBucket", "bucket", "bucket")],
    "worker": [
        ("s3:PutObject", "input", "key"), ("s3:PutObject", "keyset", "key"), ("s3:PutObject", "model", "key"),
        ("s3:AbortMultipartUpload", "input", "key"), ("s3:AbortMultipartUpload", "keyset", "key"),
        ("s3:DeleteObject", "keyset", "key"), ("s3:DeleteObject", "model", "key"),
        ("s3:GetObject", "result", "key"),
        ("s3:ListBucket", "tenant", "prefix"), ("s3:ListBucket", "keyset", "prefix"),
        ("s3:ListBucket", "model", "prefix"), ("s3:ListBucket", "bucket", "prefix"),
        ("s3:CreateBucket", "bucket", "bucket"),
    ],
    "migrate": [
        (action, area, "key")
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
        for area in ("keyset", "input", "result")
    # Listing stays whole-bucket: `admin migrate` finds the bucket with HeadBucket, which IAM
    # authorizes as ListBucket without a prefix (names only, never contents).
    ] + [("s3:CreateBucket", "bucket", "bucket")],
}


def store_actions(root: Path) -> set[str]:
    """The IAM actions behind the SDK calls the store makes."""
    calls: set[str] = set()
    for source in (root / "crates/store/src").glob("**/*.rs"):
        calls |= set(re.findall(r"\.([a-z0-9_]+)\(\)", source.read_text()))
    return {action for call, action in SDK_ACTIONS.items() if call in calls}


def layout_areas(root: Path, report: Report) -> dict[str, str]:
    """Each area of the layout with a sample prefix, from layout.rs's format strings."""
    text = (root / "crates/store/src/layout.rs").read_text()
    areas: dict[str, str] = {}
    for template in set(re.findall(r'format!\("((?:tenants|models)/[^"]*)"', text)):
        names = re.findall(r"\{(\w+)\}", template)
        if not report.check(all(n in SAMPLES for n in names), "layout.rs",
                            f"placeholder of {template!r} unknown to policies.py (add a sample)"):
            continue
        prefix = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], template)
        if template.startswith("models/"):
            area = "model"
        elif "/keysets/" in template:
            area = "keyset"
        elif template.endswith("/input/"):
            area = "input"
        elif template.endswith("/result/"):
            area = "result"
        elif template.endswith("/jobs/{job}/") or template.endswith("/jobs/{j}/"):
            area = "job"
        elif re.fullmatch(r"tenants/\{\w+\}/", template):
            area = "tenant"
        else:
            report.check(False, "layout.rs", f"prefix {template!r} is new to policies.py: decide which role may use it")
            continue
        areas[area] = prefix
    for area in ("tenant", "job", "keyset", "input", "result", "model"):
        report.check(area in areas, "layout.rs", f"no {area} prefix found")
    return areas


def iam_glob(pattern: str, value: str) -> bool:
    """IAM's resource and StringLike matching: `*` any run of characters (slashes too), `?` one."""
    return re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), value) is not None


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allowed(policy: dict, action: str, resource: str, prefix: str | None) -> bool:
    for statement in policy["Statement"]:
        if action not in as_list(statement.get("Action", [])):
            continue
        if not any(iam_glob(r, resource) for r in as_list(statement.get("Resource", []))):
            continue
        condition = statement.get("Condition")
        if condition:
            likes = condition.get("StringLike", {}).get("s3:prefix")
            if prefix is None or likes is None or not any(iam_glob(p, prefix) for p in as_list(likes)):
                continue
        return True
    return False


def check_policy(report: Report, role: str, path: Path, policy, bucket: str, actions: set[str], areas: dict[str, str]) -> None:
    where = str(path)
    if not report.check(isinstance(policy, dict) and policy.get("Version") == "2012-10-17"
                        and isinstance(policy.get("Statement"), list) and policy["Statement"],
                        where, "must be an IAM policy: Version 2012-10-17 and a list of statements"):
        return
    bucket_arn = f"arn:aws:s3:::{bucket}"
    samples = [prefix + NAMES.get(area, "x") for area, prefix in areas.items()]
    for index, statement in enumerate(policy["Statement"]):
        here = f"{where}: Statement[{index}]"
        report.check(set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, here,
                     f"unexpected fields {sorted(set(statement) - {'Sid', 'Effect', 'Action', 'Resource', 'Condition'})}")
        report.check(statement.get("Effect") == "Allow", here, "only Allow statements (least privilege by omission)")
        for action in as_list(statement.get("Action", [])):
            report.check(action in actions, here, f"{action} is not an action the store uses ({', '.join(sorted(actions))})")
        for resource in as_list(statement.get("Resource", [])):
            if resource == bucket_arn:
                continue
            if not report.check(isinstance(resource, str) and resource.startswith(bucket_arn + "/"), here,
                                f"{resource!r} is not in the bucket {bucket!r} (base/configmap.yaml)"):
                continue
            pattern = resource[len(bucket_arn) + 1:]
            report.check(any(iam_glob(pattern, key) for key in samples), here,
                         f"{pattern!r} matches no key of the layout (crates/store/src/layout.rs)")
        condition = statement.get("Condition")
        if condition is not None:
            report.check(set(condition) == {"StringLike"} and set(condition["StringLike"]) == {"s3:prefix"}, here,
                         "only a StringLike condition on s3:prefix is understood here")
    for expect, rules in ((True, MUST[role]), (False, MUST_NOT[role])):
        for action, area, kind in rules:
            if kind == "bucket" or area == "bucket":
                resource, prefix = bucket_arn, ("" if kind == "prefix" else None)
            elif kind == "prefix":
                resource, prefix = bucket_arn, areas.get(area)
            else:
                resource, prefix = f"{bucket_arn}/{areas.get(area, '')}{NAMES.get(area, 'x')}", None
            if kind != "bucket" and area != "bucket" and area not in areas:
                continue
            ok = allowed(policy, action, resource, prefix)
            target = f"listing {prefix!r}" if kind == "prefix" else resource
            report.check(ok == expect, where, f"{role} {'must' if expect else 'must not'} be allowed {action} on {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Check the bucket policies of infra/s3/policies.")
    parser.add_argument("root", type=Path, help="the repository root")
    args = parser.parse_args()
    root = args.root
    report = Report()
    configmap = yaml.safe_load((root / "infra/k8s/base/configmap.yaml").read_text())
    bucket = configmap["data"]["BLINDFOLD_S3_BUCKET"]
    actions = store_actions(root)
    report.check(bool(actions), "crates/store/src", "no SDK calls found")
    areas = layout_areas(root, report)
    directory = root / "infra/s3/policies"
    files = sorted(directory.glob("*.json"))
    report.check({f.stem for f in files} == set(ROLES), str(directory), f"expected one policy per role {ROLES}, got {[f.name for f in files]}")
    for path in files:
        if path.stem not in ROLES:
            continue
        try:
            policy = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            report.check(False, str(path), f"not JSON: {error}")
            continue
        check_policy(report, path.stem, path, policy, bucket, actions, areas)
    for error in report.errors:
        print(f"FAIL {error}", file=sys.stderr)
    if report.errors:
        return 1
    print(f"bucket policies ok ({', '.join(f.name for f in files)}; bucket {bucket}; actions {', '.join(sorted(actions))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
