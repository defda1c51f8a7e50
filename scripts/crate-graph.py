#!/usr/bin/env python3
"""Prints the workspace's internal dependency graph (normal dependencies, from `cargo
metadata`), one line per crate: `crate -> dep, dep`. docs/ARCHITECTURE.md's graph is checked
against it by `bins/bluesminds/tests/architecture.rs`."""
import json
import subprocess
import sys

meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        stderr=subprocess.DEVNULL,
    )
)
ours = {p["name"] for p in meta["packages"]}
for p in sorted(meta["packages"], key=lambda p: p["name"]):
    deps = sorted(
        {d["name"] for d in p["dependencies"] if d["name"] in ours and d.get("kind") is None}
    )
    sys.stdout.write(f"{p['name']} -> {', '.join(deps) if deps else '(none)'}\n")
