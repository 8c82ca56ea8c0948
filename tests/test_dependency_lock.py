"""The hash locks (`make lock`) agree with the pinned inputs, and every installed file is hash-checked.

A pin changed in ``requirements*.txt`` without ``make lock`` fails here, naming the package and both
versions; so does a lock entry without a sha256 hash (``--require-hashes`` would refuse the whole file).
"""

from __future__ import annotations

import re

import pytest
from packaging.specifiers import SpecifierSet

from flywheel.config import PROJECT_ROOT

# Each lock and the inputs it is compiled from (Makefile, target `lock`).
LOCK_INPUTS = {
    "requirements.lock": ["requirements.txt"],
    "requirements-dev.lock": ["requirements.txt", "requirements-dev.txt"],
    "requirements-job.lock": ["requirements.txt"],
    "requirements-build.lock": ["requirements-build.txt"],
    "requirements-model.lock": ["requirements-model.txt"],
}
# The job image has neither Airflow (the pod runs `flywheel`, not a task) nor the lock's torch (its
# base image has the CUDA build): the Makefile's grep leaves these out of the job lock's input.
NOT_IN_JOB_IMAGE = re.compile(r"^(apache-airflow.*|torch)$")

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)$")
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def input_pins(name: str) -> dict[str, str]:
    """``{package: version}`` of an input file; every requirement in it must be an exact pin."""
    pins = {}
    for number, raw in enumerate((PROJECT_ROOT / name).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        assert match, f"{name}:{number}: {line!r} is not an exact pin (name==version)"
        pins[_canonical(match["name"])] = match["version"]
    return pins


def parse_lock(name: str) -> dict[str, tuple[str, list[str], set[str]]]:
    """``{package: (version, hashes, via)}`` of a lock; ``via`` holds the ``-r FILE`` sources that uv's
    annotations name (the packages pinned in that file) and the packages that depend on it."""
    entries: dict[str, tuple[str, list[str], set[str]]] = {}
    current: str | None = None
    logical = ""
    for raw in (PROJECT_ROOT / name).read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            if current is not None:
                via = stripped.lstrip("#").strip().removeprefix("via").strip()
                if via:
                    entries[current][2].add(via)
            continue
        if not stripped and not logical:
            continue
        logical += " " + stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        requirement, *options = logical.split()
        logical = ""
        match = _PIN.match(requirement)
        assert match, f"{name}: {requirement!r} is not an exact pin"
        current = _canonical(match["name"])
        assert current not in entries, f"{name}: {current} is locked twice"
        entries[current] = (match["version"], options, set())
    assert not logical, f"{name}: ends inside a continued line"
    return entries


def same_version(locked: str, pinned: str) -> bool:
    # PEP 440: ==2.13.0 matches the local build 2.13.0+cpu (the CPU torch the locks record).
    return SpecifierSet(f"=={pinned}").contains(locked, prereleases=True)


@pytest.mark.parametrize("lock", sorted(LOCK_INPUTS))
def test_every_locked_file_has_a_sha256_hash(lock: str) -> None:
    entries = parse_lock(lock)
    assert entries, f"{lock} is empty"
    for package, (version, options, _) in entries.items():
        assert options, f"{lock}: {package}=={version} has no --hash (run `make lock`)"
        for option in options:
            assert _HASH.match(option), f"{lock}: {package}=={version}: unexpected {option!r}"


@pytest.mark.parametrize("lock", sorted(LOCK_INPUTS))
def test_lock_has_every_pin_of_its_inputs_at_the_same_version(lock: str) -> None:
    entries = parse_lock(lock)
    for source in LOCK_INPUTS[lock]:
        for package, pinned in input_pins(source).items():
            if lock == "requirements-job.lock" and NOT_IN_JOB_IMAGE.match(package):
                assert package not in entries, f"{lock}: {package} must not be in the job image"
                continue
            assert package in entries, f"{lock}: {package} ({source}) is missing; run `make lock`"
            locked = entries[package][0]
            assert same_version(locked, pinned), (
                f"{lock}: {package}=={locked}, but {source} pins {pinned}; run `make lock`"
            )


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock", "requirements-build.lock"])
def test_lock_has_no_direct_requirement_its_inputs_dropped(lock: str) -> None:
    """A pin removed from an input leaves its package in the lock as ``via -r FILE``: stale."""
    pinned = {package for source in LOCK_INPUTS[lock] for package in input_pins(source)}
    for package, (_, _, via) in parse_lock(lock).items():
        sources = {v.removeprefix("-r ").strip() for v in via if v.startswith("-r ")}
        if sources & set(LOCK_INPUTS[lock]):
            assert package in pinned, f"{lock}: {package} is no longer pinned in {sorted(sources)}"


DERIVED_LOCKS = ["requirements-dev.lock", "requirements-job.lock", "requirements-build.lock"]


@pytest.mark.parametrize("lock", DERIVED_LOCKS)
def test_derived_locks_match_the_runtime_lock(lock: str) -> None:
    """Tests and job pods run the versions the Airflow image ships."""
    runtime = parse_lock("requirements.lock")
    for package, (version, _, _) in parse_lock(lock).items():
        if package in runtime:
            assert version == runtime[package][0], (
                f"{lock}: {package}=={version}, requirements.lock has {runtime[package][0]}"
            )


def test_makefile_and_dockerfile_install_only_from_the_locks() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    installs = [
        line
        for text in (makefile, dockerfile)
        for line in text.replace("\\\n", " ").splitlines()
        if re.search(r"\bpip install\b", line)
    ]
    assert installs
    for line in installs:
        if "-e ." in line:  # the package itself, from this tree, without dependencies
            assert "--no-deps" in line and "--no-build-isolation" in line, line
        else:
            assert "--require-hashes" in line and re.search(r"-r \S+\.lock\b", line), line


def test_dockerfile_pins_every_base_image_by_digest() -> None:
    lines = (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
    bases = [line.split()[1] for line in lines if line.startswith("FROM ") and line.split()[1] != "scratch"]
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"\$\{\w+\}@\$\{\w+_DIGEST\}", base), base
    assert not any(line.startswith("# syntax=") for line in lines), "the frontend image would float"
    assert ":latest" not in "\n".join(line for line in lines if not line.startswith("#"))
