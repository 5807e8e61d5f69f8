"""The container image's static contract: what `make image-check` builds must also hold for any
Docker build, so the parts no build on this machine exercises are checked from the text here.

tests/test_deploy.py covers hadolint, the base-image argument, USER, ENTRYPOINT, CMD and the
build context; this adds the stop signal, the OCI labels and the dependency pins
(constraints.txt), whose drift from pyproject.toml otherwise shows only in a real build.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
OCI = "org.opencontainers.image."


def instructions() -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) with continuation lines joined, comments dropped;
    stage -1 holds what precedes the first FROM."""
    logical: list[str] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    stage = -1
    result = []
    for text in logical:
        keyword, _, args = text.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append((stage, keyword, " ".join(args.split())))
    return result


def final_stage() -> list[tuple[str, str]]:
    """The runtime stage's instructions: the image that ships."""
    found = instructions()
    last = max(stage for stage, _, _ in found)
    return [(keyword, args) for stage, keyword, args in found if stage == last]


def labels() -> dict[str, str]:
    """The runtime stage's LABEL key="value" pairs."""
    pairs: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "LABEL":
            pairs.update(re.findall(r'([\w.-]+)="([^"]*)"', args))
    return pairs


def constraints() -> dict[str, tuple[str, int]]:
    """constraints.txt as canonical name -> (version, line number)."""
    pins: dict[str, tuple[str, int]] = {}
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"constraints.txt:{number}: not an exact pin 'name==version': {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = (match[2], number)
    return pins


def test_runtime_stage_stops_with_sigterm():
    """run drains and checkpoints on SIGTERM only: a runtime sending another signal (a base
    image's STOPSIGNAL, SIGQUIT in some) would kill it mid-batch."""
    signals = [args for keyword, args in final_stage() if keyword == "STOPSIGNAL"]
    assert signals == ["SIGTERM"]


def test_oci_labels_describe_the_image():
    """The labels registries and scanners read: the version follows pyproject.toml, the license
    too, and base.name is the BASE_IMAGE actually used — which needs the ARG redeclared in the
    stage, or the label silently comes out empty."""
    found = labels()
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert found.get(OCI + key), f"no {OCI}{key} label"
    assert found[OCI + "title"] == PYPROJECT["project"]["name"]
    license = PYPROJECT["project"]["license"]  # "MIT" or the older {text = "MIT"}
    assert found[OCI + "licenses"] == (license if isinstance(license, str) else license["text"])
    assert found[OCI + "base.name"] == "${BASE_IMAGE}"
    stage = final_stage()
    args = {args.split("=", 1)[0]: args for keyword, args in stage if keyword == "ARG"}
    assert "BASE_IMAGE" in args, "ARG BASE_IMAGE is not redeclared in the runtime stage"
    assert args.get("VERSION") == f"VERSION={PYPROJECT['project']['version']}"
    assert "REVISION" in args


def test_builder_installs_from_the_pins():
    """Dependencies come from constraints.txt (also for the isolated build backend, hence the
    environment variable rather than -c), and the build context lets the file in."""
    found = instructions()
    builder = [(keyword, args) for stage, keyword, args in found if stage == 0]
    env = " ".join(args for keyword, args in builder if keyword == "ENV")
    assert "PIP_CONSTRAINT=/src/constraints.txt" in env
    copies = [args for keyword, args in builder if keyword == "COPY"]
    assert any(args.startswith("constraints.txt ") and args.endswith(" ./") for args in copies)
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "!constraints.txt" in ignore


@pytest.mark.parametrize(
    "section",
    ["dependencies", "build-system"],
)
def test_constraints_pin_every_declared_requirement(section: str):
    """Each requirement of pyproject.toml has an exact pin that satisfies it: a dependency added
    without `bash scripts/image-check.sh --update-constraints` would be installed unpinned in
    the image (or, with a conflicting pin, break its build)."""
    declared = (
        PYPROJECT["project"]["dependencies"]
        if section == "dependencies"
        else PYPROJECT["build-system"]["requires"]
    )
    assert declared
    pins = constraints()
    problems = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not pinned")
            continue
        version, line = pins[name]
        if not requirement.specifier.contains(Version(version), prereleases=True):
            problems.append(f"constraints.txt:{line}: {name}=={version} violates {text!r}")
    assert not problems, "; ".join(problems) + (
        " (run: bash scripts/image-check.sh --update-constraints)"
    )
