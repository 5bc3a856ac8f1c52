"""Packaging and deployment files: one version, a complete wheel, pinned dependencies, and a
compose file / Dockerfile that hold no secret, fail fast and run pinned images as non-root.

No database; the wheel is built from a copy of the tree (so nothing lands in build/ here).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import harvester

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ("POSTGRES_PASSWORD", "IMIN_API_KEY")


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared_requirements() -> list[Requirement]:
    """Every dependency pyproject names: runtime and every extra (test, dev...)."""
    project = pyproject()["project"]
    named = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        named.extend(extra)
    return [Requirement(text) for text in named]


@cache
def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


# --- one version ----------------------------------------------------------------------------


def test_version_lives_in_harvester_init_only():
    assert importlib.metadata.version("harvester") == harvester.__version__
    project = pyproject()["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    dynamic = pyproject()["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "harvester.__version__"}
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert not re.search(r"(?m)^\s*version\s*=\s*[\"']", text), "a literal version in pyproject"
    init = (ROOT / "harvester" / "__init__.py").read_text(encoding="utf-8")
    assert len(re.findall(r"(?m)^__version__\s*=", init)) == 1


def test_license_and_typed_marker_are_in_the_tree():
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "The harvester authors" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (ROOT / "harvester" / "py.typed").is_file()
    project = pyproject()["project"]
    assert project["license"] == "MIT"
    assert "Typing :: Typed" in project["classifiers"]
    assert project["urls"]


# --- the wheel ------------------------------------------------------------------------------


def test_wheel_ships_typed_marker_migrations_sample_and_license(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("harvester", "migrations"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("harvester-*.whl")
    assert wheel.name.startswith(f"harvester-{harvester.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for wanted in (
            "harvester/py.typed",
            "harvester/migrations/env.py",
            "harvester/migrations/script.py.mako",
            "harvester/migrations/versions/0007_*.py",
            "harvester/sample/__init__.py",
            "harvester/sample/checkout.py",
            "*.dist-info/licenses/LICENSE",
        ):
            assert fnmatch.filter(names, wanted), f"{wanted} missing from {wheel.name}"
        (metadata,) = fnmatch.filter(names, "*.dist-info/METADATA")
        meta = archive.read(metadata).decode()
        (license_file,) = fnmatch.filter(names, "*.dist-info/licenses/LICENSE")
        assert "The harvester authors" in archive.read(license_file).decode()
    assert f"\nVersion: {harvester.__version__}\n" in meta
    assert "\nLicense-Expression: MIT\n" in meta
    assert "\nLicense-File: LICENSE\n" in meta
    assert "\nClassifier: Typing :: Typed\n" in meta
    assert "\nProject-URL: " in meta


# --- pinned dependencies --------------------------------------------------------------------


def test_every_declared_dependency_is_pinned_exactly_and_within_its_range():
    pins = constraints()
    assert "harvester" not in pins
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {req}"
        )


def test_dev_extra_pins_ruff_as_constraints_does():
    (ruff,) = [Requirement(text) for text in pyproject()["project"]["optional-dependencies"]["dev"]]
    assert canonicalize_name(ruff.name) == "ruff"
    (spec,) = ruff.specifier
    assert spec.operator == "=="
    assert constraints()["ruff"] == spec.version


def _wanted(marker: Marker | None, extras: set[str]) -> bool:
    return marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""})


def test_constraints_cover_the_installed_transitive_closure():
    """Every declared requirement is pinned, and so is what it pulls in, all the way down,
    as far as it is installed here (CI installs `.[test,dev]`)."""
    pins = constraints()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, set(req.extras)) for req in declared_requirements()]
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        assert key[0] in pins, f"{req.name} (needed for {req}) has no pin in constraints.txt"
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra not installed here (the README installs `.[test]`, not dev)
        for text in dist.requires or []:
            sub = Requirement(text)
            if _wanted(sub.marker, extras):
                todo.append((sub, set(sub.extras)))


def test_ci_installs_with_constraints_then_tests_then_lints():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [
        "python -m pip install --quiet -c constraints.txt -e '.[test,dev]'",
        "python -m pytest -q",
        "python -m ruff check .",
        "python -m ruff format --check .",
    ]
    at = [run.find(step) for step in steps]
    assert all(i >= 0 for i in at), dict(zip(steps, at, strict=True))
    assert at == sorted(at)


# --- docker-compose.yml ---------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def environment(service: str) -> dict[str, str]:
    env = compose()["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def required(name: str) -> str:
    """`${NAME:?message}`: compose refuses to start when NAME is unset or empty."""
    return r"\$\{" + name + r":\?[^}]+\}"


def test_compose_takes_secrets_from_the_environment_and_fails_fast():
    postgres, worker = environment("postgres"), environment("harvester")
    assert re.fullmatch(required("POSTGRES_PASSWORD"), postgres["POSTGRES_PASSWORD"])
    assert re.fullmatch(required("IMIN_API_KEY"), worker["IMIN_API_KEY"])
    url = worker["DATABASE_URL"]
    match = re.fullmatch(r"postgresql://([^:@/]+):(.+)@postgres:5432/(\w+)", url)
    assert match, url
    assert re.fullmatch(required("POSTGRES_PASSWORD"), match[2]), "a literal password in the URL"
    assert match[1] == postgres["POSTGRES_USER"]
    assert match[3] == postgres["POSTGRES_DB"]
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert not re.search(r"(?im)^\s*\w*password\w*\s*:\s*(?!\$\{)\S", text), "a literal password"
    assert not re.search(r"://[^:/@\s]+:(?!\$\{)[^@\s]+@", text), "a literal password in a URL"


def test_compose_postgres_is_not_on_the_host_by_default_and_images_are_pinned():
    postgres = compose()["services"]["postgres"]
    assert "ports" not in postgres
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres"
    assert re.match(r"\d+\.\d+", tag), f"postgres image not pinned to a minor: {tag!r}"
    opt_in = yaml.safe_load((ROOT / "deploy" / "compose.postgres-port.yml").read_text())
    assert opt_in["services"]["postgres"]["ports"] == ["127.0.0.1:5432:5432"]


def _compose_config(
    env_file: Path, env: dict[str, str], *files: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    args = ["docker-compose", "--env-file", str(env_file)]  # a developer's .env must not help
    for name in ("docker-compose.yml", *files):
        args += ["-f", str(ROOT / name)]
    return subprocess.run(
        [*args, "config", "-q"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_validates_with_the_secrets_and_refuses_without(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    both = {"POSTGRES_PASSWORD": "x", "IMIN_API_KEY": "y"}
    done = _compose_config(empty, both)
    assert done.returncode == 0, done.stderr
    done = _compose_config(empty, both, "deploy/compose.postgres-port.yml")
    assert done.returncode == 0, done.stderr
    for missing in SECRETS:
        done = _compose_config(empty, {k: v for k, v in both.items() if k != missing})
        assert done.returncode != 0
        assert f"set {missing}" in done.stderr, done.stderr
    done = _compose_config(empty, {**both, "IMIN_API_KEY": ""})
    assert done.returncode != 0


# --- Dockerfile -----------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def instructions(word: str) -> list[str]:
    return [rest for name, rest in dockerfile() if name == word]


def test_dockerfile_pins_its_base_images():
    stages: set[str] = set()
    froms = instructions("FROM")
    assert froms
    for rest in froms:
        image, *alias = rest.split()
        if image in stages:
            continue
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", f"unpinned base image {image}"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image}: not pinned to a patch release"
        if alias:
            stages.add(alias[-1])


def test_dockerfile_installs_with_constraints_and_runs_as_non_root():
    installs = [rest for rest in instructions("RUN") if "pip install" in rest]
    assert installs
    for rest in installs:
        assert "-c constraints.txt" in rest, rest
    assert any("constraints.txt" in rest for rest in instructions("COPY"))
    users = instructions("USER")
    assert users, "no USER: the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert dockerfile()[-1][0] in ("CMD", "ENTRYPOINT")
    last_user = max(i for i, (name, _) in enumerate(dockerfile()) if name == "USER")
    assert all(name != "RUN" for name, _ in dockerfile()[last_user:])


def test_dockerfile_exposes_its_ports_and_checks_its_health():
    exposed = {port for rest in instructions("EXPOSE") for port in rest.split()}
    assert {"9464", "8080"} <= {port.split("/")[0] for port in exposed}
    (check,) = instructions("HEALTHCHECK")
    assert "CMD" in check
    assert "urllib" in check
    assert "http://127.0.0.1:9464/healthz" in check
