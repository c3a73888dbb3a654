"""The container images' Dockerfiles (no image can be built here): they parse, are multi-stage, every base is
pinned (never `latest`), the final stage runs as a non-root user, and the Ray base matches surge's Ray pin."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from cluster.config import PROJECT_ROOT

DOCKERFILES = {"gpu": PROJECT_ROOT / "docker" / "Dockerfile", "cpu": PROJECT_ROOT / "docker" / "Dockerfile.cpu"}
_ROOT_USERS = {"root", "0"}


def _instructions(text: str) -> list[tuple[str, str]]:
    parser = DockerfileParser(fileobj=io.StringIO(text))
    return [(item["instruction"], item["value"]) for item in parser.structure]


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    _, _, tag = image.rpartition("/")[2].partition(":")
    return bool(tag) and tag != "latest"


def dockerfile_problems(text: str) -> list[str]:
    """What keeps a Dockerfile from being a pinned, multi-stage, non-root build; empty when none."""
    problems, stages, user = [], [], None
    for instruction, value in _instructions(text):
        if instruction == "FROM":
            image, *rest = value.split()
            if image not in stages and not _pinned(image):
                problems.append(f"FROM {image}: not pinned to a version tag or digest")
            stages.append(rest[-1] if len(rest) >= 2 and rest[-2].upper() == "AS" else image)
            user = None
        elif instruction == "USER":
            user = value.split(":")[0].strip()
        for source in re.findall(r"--from=([^\s,]+)", value):
            if source not in stages:
                problems.append(f"{instruction} --from={source}: no earlier stage of that name")
        if re.search(r"(^|[\s:])latest(\s|$)", value):
            problems.append(f"{instruction} {value}: uses `latest`")
    if len(stages) < 2:
        problems.append("single stage: build and runtime are not separated")
    if user is None or user in _ROOT_USERS:
        problems.append(f"the final stage runs as {user or 'root (no USER)'}")
    return problems


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_is_pinned_multi_stage_and_non_root(flavour: str) -> None:
    assert dockerfile_problems(DOCKERFILES[flavour].read_text()) == []


def test_lint_finds_unpinned_single_stage_root_images() -> None:
    problems = dockerfile_problems("FROM python\nCOPY --from=build /a /b\nRUN pip install x\n")
    assert problems == [
        "FROM python: not pinned to a version tag or digest",
        "COPY --from=build: no earlier stage of that name",
        "single stage: build and runtime are not separated",
        "the final stage runs as root (no USER)",
    ]
    assert "FROM ubuntu:latest: not pinned to a version tag or digest" in dockerfile_problems(
        "FROM ubuntu:latest AS a\nFROM a\nUSER 0\n"
    )


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_base_image_carries_the_ray_surge_pins(flavour: str) -> None:
    ray_pin = re.search(r'"ray\[serve\]==([0-9.]+)"', (PROJECT_ROOT / "pyproject.toml").read_text())
    assert ray_pin
    bases = {value.split()[0] for instruction, value in _instructions(DOCKERFILES[flavour].read_text())
             if instruction == "FROM"}  # fmt: skip
    assert bases == {f"rayproject/ray:{ray_pin.group(1)}-py311-{'cu128' if flavour == 'gpu' else 'cpu'}"}


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_image_installs_its_engine_extra_and_the_paths_the_chart_uses(flavour: str) -> None:
    text = DOCKERFILES[flavour].read_text()
    assert f'".[{flavour}]"' in text
    values = (PROJECT_ROOT / "helm" / "surge" / "values.yaml").read_text()
    wrapper = re.search(r"wrapperPath: (\S+)", values)
    binary = re.search(r"binaryPath: (\S+)", values)
    assert wrapper and binary
    assert wrapper.group(1) == "/opt/surge/cluster/bin/haproxy-loopback"
    assert "COPY --chown=1000:100 cluster /opt/surge/cluster" in text
    assert binary.group(1) in text
    assert Path(PROJECT_ROOT / "cluster" / "bin" / "haproxy-loopback").stat().st_mode & 0o111
