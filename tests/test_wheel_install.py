"""The container image, without a container engine.

No Docker daemon runs in CI, so this module does what `docker build` would and checks the rest:
- the Dockerfile's shape is asserted (multi-stage, a final stage that only copies the virtual
  environment, numeric non-root USER, ENTRYPOINT, EXPOSE, PATH), so that a regression fails here;
- the build context is computed from .dockerignore, the builder stage's COPY instructions are applied
  to it, and the builder's RUN line itself is executed (with /wheels and /opt/dnsd mapped to temporary
  directories) to build the wheel and install it into a fresh virtual environment;
- the installed `dnsd` then reports its version and, started on the example manifests on a loopback
  port, answers the zone's SOA authoritatively over UDP and TCP.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

import dnsd
from tests.started_dnsd import example_flags, free_port, query_soa, stop

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
EXAMPLE_MANIFESTS = REPO / "examples" / "cluster.yaml"
ZONE = "c2.k8s.ooo"
BASE_IMAGE = "python:3.12-slim"
VENV = "/opt/dnsd"
WHEELS = "/wheels"
NON_ROOT = "65532:65532"


# ------------------------------------------------------------------------------------------------
# a small Dockerfile reader: enough of the syntax for this Dockerfile, strict about the rest


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def read_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also comments inside a continued instruction, as Docker does
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"unexpected FROM {arguments}"
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = arguments.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return global_args, stages


def env_pairs(arguments: str) -> dict[str, str]:
    """ENV KEY=VALUE [KEY=VALUE...] (the only ENV form this Dockerfile uses)."""
    pairs = {}
    for word in shlex.split(arguments):
        key, sep, value = word.partition("=")
        assert sep, f"ENV {arguments}: use the KEY=VALUE form"
        pairs[key] = value
    return pairs


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    return stages[0]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


# ------------------------------------------------------------------------------------------------
# the Dockerfile's shape


def test_dockerfile_is_multi_stage_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) == 2
    assert stages[0].name == "builder"
    assert stages[-1].name is None
    assert [s.base for s in stages] == [BASE_IMAGE, BASE_IMAGE]


def test_builder_builds_the_wheel_into_a_venv(builder: Stage) -> None:
    (run,) = builder.all("RUN")
    assert f"pip wheel --no-deps --wheel-dir {WHEELS} ." in run
    assert f"python -m venv {VENV}" in run
    assert re.search(rf"{VENV}/bin/pip install \"\$\(ls {WHEELS}/dnsd-\*\.whl\)\[fast\]\"", run), run
    copies = builder.all("COPY")
    assert copies, "the builder copies nothing"
    assert all(not c.startswith("--from") for c in copies)


def test_final_stage_only_copies_the_venv(final: Stage) -> None:
    assert final.all("RUN") == []  # no package manager, no compiler, no build step
    assert final.all("COPY") == [f"--from=builder {VENV} {VENV}"]
    assert final.all("ADD") == []


def test_final_stage_runs_as_numeric_non_root(final: Stage) -> None:
    (user,) = final.all("USER")
    assert re.fullmatch(r"\d+:\d+", user), "a numeric user lets runAsNonRoot verify it"
    uid, gid = (int(x) for x in user.split(":"))
    assert uid != 0
    assert gid != 0
    assert user == NON_ROOT  # the chart's runAsUser/runAsGroup
    keywords = [i.keyword for i in final.instructions]
    assert keywords.index("USER") > keywords.index("COPY")


def test_final_stage_entrypoint_ports_and_path(final: Stage) -> None:
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["dnsd"]
    assert final.all("CMD") == []  # the chart passes `--config FILE` as args
    exposed = {port for line in final.all("EXPOSE") for port in line.split()}
    assert exposed == {"1053/udp", "1053/tcp", "8080/tcp"}
    env: dict[str, str] = {}
    for line in final.all("ENV"):
        env.update(env_pairs(line))
    assert env["PATH"] == f"{VENV}/bin:$PATH"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only in the chart


# ------------------------------------------------------------------------------------------------
# the build context


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per .dockerignore line; `*` stays within a path element, `**` spans them."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((not include, re.compile(regex)))
    return patterns


def in_build_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = exclude
    return not excluded


def build_context(destination: Path) -> Path:
    patterns = dockerignore_patterns()
    for path in sorted(REPO.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith((".git/", ".venv/", ".tools/")) or not path.is_file():
            continue  # big, and excluded by `*` anyway (asserted below)
        if in_build_context(relative, patterns):
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return destination


def test_build_context_is_small(tmp_path: Path) -> None:
    patterns = dockerignore_patterns()
    for unwanted in (
        ".git/config",
        ".venv/bin/python",
        "tests/test_chart.py",
        "chart/values.yaml",
        "dnsd/__pycache__/cli.cpython-312.pyc",
        ".tools/bin/helm",
        "Dockerfile",
    ):
        assert not in_build_context(unwanted, patterns), unwanted
    for wanted in ("pyproject.toml", "README.md", "dnsd/__init__.py", "dnsd/kube/model.py"):
        assert in_build_context(wanted, patterns), wanted
    context = build_context(tmp_path / "context")
    assert (context / "dnsd" / "__init__.py").is_file()
    assert not list(context.rglob("__pycache__"))


def apply_copies(stage: Stage, context: Path, workdir: Path) -> None:
    """The stage's `COPY SRC... DEST` from the context into workdir (DEST relative to WORKDIR)."""
    for copy in stage.all("COPY"):
        *sources, dest = copy.split()
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            target = workdir / dest
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)  # a directory's contents
            elif dest.endswith("/") or len(sources) > 1:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)


# ------------------------------------------------------------------------------------------------
# build and install as the builder stage does


@pytest.fixture(scope="module")
def installed(builder: Stage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the builder stage's RUN line on a copy of the build context; returns the venv path."""
    root = tmp_path_factory.mktemp("image")
    context = build_context(root / "context")
    (workdir,) = builder.all("WORKDIR")
    src = root / workdir.lstrip("/")
    src.mkdir(parents=True)
    apply_copies(builder, context, src)
    venv, wheels = root / VENV.lstrip("/"), root / WHEELS.lstrip("/")
    (run,) = builder.all("RUN")
    script = run.replace(VENV, str(venv)).replace(WHEELS, str(wheels))
    # `python` and `pip` in the RUN line are the base image's; here they are this interpreter's.
    shims = root / "shims"
    shims.mkdir()
    for name, target in (("python", f'exec "{sys.executable}" "$@"'), ("pip", f'exec "{sys.executable}" -m pip "$@"')):
        (shims / name).write_text(f"#!/bin/sh\n{target}\n", encoding="utf-8")
        (shims / name).chmod(0o755)
    env = dict(os.environ)
    for line in builder.all("ENV"):
        env.update(env_pairs(line))
    env.pop("PIP_NO_CACHE_DIR", None)  # the image wants no cache layer; a test run may reuse pip's cache
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["sh", "-ec", script], cwd=src, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert result.returncode == 0, f"builder RUN failed:\n{script}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip().endswith(dnsd.__version__)
    assert len(list(wheels.glob("dnsd-*.whl"))) == 1
    return venv


def final_env(venv: Path) -> dict[str, str]:
    """The final stage's environment: its ENV lines with /opt/dnsd mapped to the test venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv}/bin{os.pathsep}{env['PATH']}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_dnsd_reports_its_version(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        ["dnsd", "--version"],
        cwd=tmp_path,
        env=final_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dnsd {dnsd.__version__}"
    assert shutil.which("dnsd", path=final_env(installed)["PATH"]) == str(installed / "bin" / "dnsd")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_venv_is_self_contained(installed: Path, tmp_path: Path) -> None:
    """dnsd and uvloop (the `fast` extra) come from the venv, not the source tree; pip is gone."""
    probe = "import dnsd, uvloop; print(dnsd.__file__); print(dnsd.__version__)"
    result = subprocess.run(
        [str(installed / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        env=final_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    module_file, version = result.stdout.split()
    assert Path(module_file).is_relative_to(installed)
    assert version == dnsd.__version__
    assert not (installed / "bin" / "pip").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_dnsd_answers_the_zone_soa(installed: Path, tmp_path: Path) -> None:
    if not EXAMPLE_MANIFESTS.is_file():
        pytest.fail(f"{EXAMPLE_MANIFESTS} is missing")
    port = free_port()
    command = ["dnsd", "--zone", ZONE, *example_flags(port)]
    log = tmp_path / "dnsd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=final_env(installed), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            udp = query_soa(process, port, ZONE, log)
            tcp = dns.query.tcp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=5)
        finally:
            returncode = stop(process)
    for response in (udp, tcp):
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.AA
        (answer,) = response.answer
        assert answer.rdtype == dns.rdatatype.SOA
        assert answer.name.to_text(omit_final_dot=True) == ZONE
    assert returncode == 0, log.read_text(errors="replace")
