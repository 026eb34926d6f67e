#!/usr/bin/env python3
"""Static checks of infra/docker/Dockerfile against the workspace (no Docker engine needed).

- Every package the Dockerfile builds (`cargo build ... -p PKG`, also the `cargo chef cook`
  line) is a member of the workspace, and every binary it copies out of target/release is a
  binary target of one of those packages.
- Each image target (`api`, `worker`, `cli`) copies its binary and runs it as ENTRYPOINT (exec
  form), under a numeric non-root USER, from a runtime without a shell.
- Base images are pinned to a version (no `latest`).
- .dockerignore keeps what the build needs (manifests, crates, workers, migrations, models) and
  drops target directories.

Usage: dockerfile.py [REPOSITORY ROOT]
"""

from __future__ import annotations

import fnmatch
import glob
import json
import re
import sys
import tomllib
from pathlib import Path

# Image target → the binary it runs (also the image's repository name in infra/k8s).
TARGETS = {"api": "blindfold-api", "worker": "blindfold-worker", "cli": "blindfold"}
NEEDED_IN_CONTEXT = ["Cargo.toml", "Cargo.lock", "crates/api/src/main.rs", "workers/Cargo.toml",
                     "migrations/20261121000001_job_queue.sql", "models/mnist-cryptonets/model.onnx"]


def workspace_binaries(root: Path) -> dict[str, set[str]]:
    """package name → its binary targets, for every workspace member."""
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    members = manifest.get("workspace", {}).get("members", [])
    excluded = set(manifest.get("workspace", {}).get("exclude", []))
    packages: dict[str, set[str]] = {}
    for pattern in members:
        for directory in sorted(glob.glob(str(root / pattern))):
            path = Path(directory)
            if str(path.relative_to(root)) in excluded or not (path / "Cargo.toml").is_file():
                continue
            package = tomllib.loads((path / "Cargo.toml").read_text())
            name = package["package"]["name"]
            bins = {b["name"] for b in package.get("bin", [])}
            autobins = package["package"].get("autobins", True)
            if autobins and (path / "src/main.rs").is_file() and not any(b.get("path") == "src/main.rs" for b in package.get("bin", [])):
                bins.add(name)
            if autobins and (path / "src/bin").is_dir():
                bins |= {p.stem for p in (path / "src/bin").glob("*.rs")}
            packages[name] = bins
    return packages


def logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
        else:
            lines.append(current + stripped)
            current = ""
    if current:
        lines.append(current)
    return lines


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        # A pattern excludes a path when it matches the path or one of its parent directories.
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))
        if pattern.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch("/".join(parts[j:i]), pattern[3:]) for j in range(len(parts)) for i in range(j + 1, len(parts) + 1))
        if hit:
            excluded = not negate
    return excluded


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    dockerfile = root / "infra/docker/Dockerfile"
    errors: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    packages = workspace_binaries(root)
    lines = logical_lines(dockerfile.read_text())
    args = {}
    stages: dict[str, list[str]] = {}
    bases: dict[str, str] = {}
    stage = None
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and stage is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            check(match is not None, f"FROM without a stage name: {line}")
            if match:
                stage = match.group(2)
                bases[stage] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
                stages[stage] = []
        elif stage is not None:
            stages[stage].append(line)

    for stage_name, base in bases.items():
        if base in stages:
            continue
        check(":" in base and not base.endswith(":latest") and "${" not in base,
              f"stage {stage_name}: base image {base!r} must be pinned to a version")

    built: set[str] = set()
    for stage_name, body in stages.items():
        for line in body:
            for command in re.findall(r"cargo (?:build|chef cook)[^&;]*", line):
                names = re.findall(r"(?:-p|--package)\s+(\S+)", command)
                check("--locked" in command, f"{stage_name}: `{command.strip()}` must use --locked")
                check(bool(names), f"{stage_name}: `{command.strip()}` must name its packages with -p")
                for name in names:
                    check(name in packages, f"{stage_name}: package {name!r} is not a workspace member "
                                            f"(members: {', '.join(sorted(packages))})")
                if command.startswith("cargo build"):
                    built |= set(names)
    binaries = set().union(*(packages.get(p, set()) for p in built)) if built else set()
    copied = set()
    for body in stages.values():
        for line in body:
            copied |= set(re.findall(r"target/release/([\w.-]+)", line))
    check(bool(copied), "no binary is copied out of target/release")
    for binary in copied:
        check(binary in binaries, f"target/release/{binary} is not a binary of the built packages {sorted(built)}")

    for target, binary in TARGETS.items():
        body = stages.get(target)
        if not check(body is not None, f"no image target {target!r}") and body is None:
            continue
        check(bases[target] == "runtime", f"{target}: must build FROM the runtime stage")
        entrypoints = [l for l in body if l.upper().startswith("ENTRYPOINT ")]
        check(len(entrypoints) == 1, f"{target}: needs one ENTRYPOINT")
        if entrypoints:
            try:
                argv = json.loads(entrypoints[0].split(" ", 1)[1])
            except json.JSONDecodeError:
                argv = None
            check(isinstance(argv, list) and argv == [f"/usr/local/bin/{binary}"],
                  f"{target}: ENTRYPOINT must be the exec form [\"/usr/local/bin/{binary}\"] (no shell in the image)")
        check(any(re.fullmatch(rf"COPY --from=builder \S*/{re.escape(binary)} /usr/local/bin/{re.escape(binary)}", l) for l in body),
              f"{target}: must COPY {binary} from the builder to /usr/local/bin/{binary}")
    runtime = stages.get("runtime", [])
    users = [l.split(" ", 1)[1] for l in runtime if l.upper().startswith("USER ")]
    check(len(users) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[0] or "") is not None,
          "runtime: needs one numeric non-root USER uid:gid")
    check("distroless" in bases.get("runtime", ""), "runtime: expected a distroless base (no shell)")
    check(not any(l.upper().startswith("RUN ") for l in runtime + sum((stages.get(t, []) for t in TARGETS), [])),
          "runtime stages cannot RUN anything (there is no shell)")

    ignore_file = root / ".dockerignore"
    patterns = [l.strip() for l in ignore_file.read_text().splitlines() if l.strip() and not l.startswith("#")] if ignore_file.is_file() else []
    check(bool(patterns), ".dockerignore is missing or empty")
    for path in NEEDED_IN_CONTEXT:
        check(not dockerignore_excludes(patterns, path), f".dockerignore excludes {path}, which the build needs")
    for path in ("target/release/blindfold", "crates/ckks/fuzz/target/x", ".git/HEAD"):
        check(dockerignore_excludes(patterns, path), f".dockerignore should exclude {path}")

    for error in errors:
        print(f"FAIL Dockerfile: {error}", file=sys.stderr)
    if errors:
        return 1
    print(f"Dockerfile ok: builds {', '.join(sorted(built))}; images {', '.join(f'{t}={b}' for t, b in TARGETS.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
