#!/usr/bin/env python3
"""A minimal kustomize renderer: the fallback of infra/check/run for machines without kustomize.

It implements only what infra/k8s uses -- `resources` (files and directories), `namespace`,
`images` and `patches` given by `path` (strategic merge for built-in kinds with the merge keys of
pod templates; JSON merge patch for custom resources) -- and refuses anything else by name,
rather than rendering it wrong. It is not kustomize: whenever a real kustomize is present,
infra/check/run renders every overlay with both and fails if they differ, which keeps this file
honest.

Usage: render.py DIR [--out FILE]   (writes a multi-document YAML stream, like `kustomize build`)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
# Strategic-merge keys of the lists we merge (pod templates). Any other list is replaced, which
# is what strategic merge does for lists without a merge key.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
# Lists that strategic merge would merge by a key we do not implement: refuse them in patches.
UNSUPPORTED_LISTS = {
    "ports", "imagePullSecrets", "topologySpreadConstraints", "hostAliases", "volumeDevices",
    "ephemeralContainers", "resourceClaims", "finalizers", "ownerReferences",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "ClusterTriggerAuthentication"}
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


class RenderError(Exception):
    pass


def load_documents(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def is_builtin(doc: dict) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def merge_list(base: list, patch: list, key: str, path: str) -> list:
    by_key = {item.get(key): item for item in base if isinstance(item, dict)}
    merged, used = [], set()
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise RenderError(f"{path}: list item without merge key {key!r}")
        if "$patch" in item:
            raise RenderError(f"{path}: $patch directives are not supported")
        original = by_key.get(item[key])
        if original is None:
            merged.append(copy.deepcopy(item))
        else:
            merged.append(strategic_merge(copy.deepcopy(original), item, True, path))
            used.add(item[key])
    # kustomize puts the patch's items first, then the untouched ones in their order.
    merged.extend(copy.deepcopy(i) for i in base if not (isinstance(i, dict) and i.get(key) in used))
    return merged


def strategic_merge(base: dict, patch: dict, builtin: bool, path: str = "") -> dict:
    for key, value in patch.items():
        here = f"{path}.{key}" if path else key
        if key.startswith("$"):
            raise RenderError(f"{here}: patch directives are not supported")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value, builtin, here)
        elif isinstance(value, list) and builtin and key in UNSUPPORTED_LISTS:
            raise RenderError(f"{here}: merging this list is not implemented; use kustomize")
        elif isinstance(value, list) and builtin and key in MERGE_KEYS and isinstance(base.get(key), list):
            base[key] = merge_list(base[key], value, MERGE_KEYS[key], here)
        else:
            base[key] = copy.deepcopy(value)
    return base


def pod_specs(doc: dict):
    path = POD_TEMPLATE_PATHS.get(doc.get("kind"))
    if path is None:
        return
    node = doc
    for step in path:
        node = node.get(step) if isinstance(node, dict) else None
        if node is None:
            return
    yield node


def set_image(container: dict, images: list[dict]) -> None:
    image = container.get("image", "")
    name, tag, digest = image, None, None
    if "@" in name:
        name, digest = name.split("@", 1)
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    for rule in images:
        if rule.get("name") != name:
            continue
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise RenderError(f"images: unsupported fields {sorted(unknown)}")
        name = rule.get("newName", name)
        if "digest" in rule:
            tag, digest = None, rule["digest"]
        elif "newTag" in rule:
            tag, digest = str(rule["newTag"]), None
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        return


def build(directory: Path) -> list[dict]:
    kustomization = directory / "kustomization.yaml"
    if not kustomization.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    spec = load_documents(kustomization)[0]
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{kustomization}: fields not supported by the fallback renderer: {sorted(unknown)}")

    docs: list[dict] = []
    for resource in spec.get("resources", []):
        target = (directory / resource).resolve()
        docs.extend(build(target) if target.is_dir() else load_documents(target))

    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{kustomization}: only `patches: - path: FILE` is supported")
        for patch in load_documents(directory / entry["path"]):
            kind, name = patch.get("kind"), patch.get("metadata", {}).get("name")
            targets = [d for d in docs if d.get("kind") == kind and d["metadata"].get("name") == name]
            if len(targets) != 1:
                raise RenderError(f"{entry['path']}: patch for {kind}/{name} matches {len(targets)} resources")
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
            strategic_merge(targets[0], body, is_builtin(targets[0]), f"{kind}/{name}")

    namespace = spec.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = namespace
            elif doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace

    images = spec.get("images", [])
    if images:
        for doc in docs:
            for pod in pod_specs(doc):
                for container in pod.get("initContainers", []) + pod.get("containers", []):
                    set_image(container, images)
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        docs = build(args.directory)
    except (RenderError, OSError, yaml.YAMLError, KeyError) as error:
        print(f"render.py: {error}", file=sys.stderr)
        return 1
    text = yaml.safe_dump_all(docs, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
