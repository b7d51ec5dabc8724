"""The container definitions (containers/harness.def, containers/Dockerfile).

Parsing and syntax checks always run (no network, no container runtime). The build test runs only
where a runtime works and HARNESS_CONTAINER_BUILD=1 is set: it pulls a multi-GB base image.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

REPO = Path(__file__).resolve().parent.parent
DEF = REPO / "containers" / "harness.def"
DOCKERFILE = REPO / "containers" / "Dockerfile"
INSTALL_DIR = "/opt/lorid-harness"
EXTRAS = {"mpi", "autoattack"}
SELF_TEST = [
    'python -c "import harness, torch; print(torch.__version__, torch.version.cuda)"',
    "harness --help > /dev/null",
    "harness doctor || true",
]

APPTAINER_SECTIONS = {"setup", "files", "environment", "post", "runscript", "startscript", "test", "labels",
                      "help", "arguments"}
DOCKER_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                       "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


# ---------------------------------------------------------------------------------------- parsers

def parse_def(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """(header, [(section, its arguments, body)]) of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: list[tuple[str, str, list[str]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^%(\w+)\s*(.*)$", line)
        if m:
            sections.append((m.group(1), m.group(2).strip(), []))
        elif sections:
            sections[-1][2].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            hm = re.match(r"^([A-Za-z][A-Za-z0-9]*):\s*(\S.*?)\s*$", line)
            assert hm, f"harness.def line {n}: header line is not 'Key: value': {line!r}"
            assert hm.group(1) not in header, f"harness.def line {n}: {hm.group(1)} given twice"
            header[hm.group(1)] = hm.group(2)
    return header, [(name, args, "\n".join(body)) for name, args, body in sections]


def def_arguments(sections) -> dict[str, str]:
    """The %arguments defaults (NAME=value lines)."""
    out = {}
    for name, _, body in sections:
        if name == "arguments":
            for line in body.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    key, sep, value = line.partition("=")
                    assert sep, f"%arguments line is not NAME=value: {line!r}"
                    out[key.strip()] = value.strip()
    return out


def render(text: str, args: dict[str, str]) -> str:
    """Substitute Apptainer's {{ NAME }} build arguments; an unknown one fails."""
    def sub(m):
        assert m.group(1) in args, f"{{{{ {m.group(1)} }}}} has no default in %arguments"
        return args[m.group(1)]
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", sub, text)


def section(sections, name: str) -> str:
    bodies = [body for n, _, body in sections if n == name]
    assert len(bodies) == 1, f"harness.def: expected one %{name}, found {len(bodies)}"
    return bodies[0]


def parse_dockerfile(text: str) -> list[tuple[str, str, str | None, int]]:
    """[(INSTRUCTION, arguments, heredoc body or None, line)], comments and continuations resolved."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        start = i + 1
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\"):  # continuation; comment lines inside it are dropped
            line = line.rstrip()[:-1]
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                i += 1
            if i < len(lines):
                line += " " + lines[i].strip()
                i += 1
        word, _, rest = line.strip().partition(" ")
        heredoc = None
        m = re.search(r"<<-?(['\"]?)(\w+)\1", rest)
        if m:
            body = []
            while i < len(lines) and lines[i].strip() != m.group(2):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"Dockerfile line {start}: heredoc {m.group(2)} is not closed"
            i += 1
            heredoc = "\n".join(body)
        out.append((word.upper(), rest.strip(), heredoc, start))
    return out


def docker_args(instructions) -> dict[str, str]:
    """The defaults of the ARGs declared before the first FROM."""
    out = {}
    for word, rest, _, _ in instructions:
        if word == "FROM":
            break
        if word == "ARG":
            key, sep, value = rest.partition("=")
            out[key] = value if sep else ""
    return out


def expand(text: str, args: dict[str, str]) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        assert args.get(name), f"${name} has no default ARG before FROM"
        return args[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def copy_sources(rest: str) -> list[str]:
    words = shlex.split(rest)
    assert not any(w.startswith("--from") for w in words), "COPY --from: a multi-stage copy, not the checkout"
    words = [w for w in words if not w.startswith("--")]
    if rest.lstrip().startswith("["):
        words = json.loads(rest)
    assert len(words) >= 2, f"COPY needs a source and a destination: {rest!r}"
    return words[:-1]


def shell_lines(script: str) -> list[str]:
    """A script's commands for comparison: comments, blank lines and indentation dropped."""
    out = []
    for line in script.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def bash_n(script: str, what: str) -> None:
    bash = shutil.which("bash")
    if bash is None:
        if os.environ.get("CI"):
            pytest.fail("bash is needed for the syntax checks of the container scripts (CI must not skip them)")
        pytest.skip("no bash here to syntax-check the container scripts")
    proc = subprocess.run([bash, "-n"], input=script, text=True, capture_output=True, timeout=30)
    assert proc.returncode == 0, f"{what} fails `bash -n`:\n{proc.stderr}"


def pinned_tag(image: str) -> str:
    """The tag of an image reference (a digest also counts as pinned); never `latest` or none."""
    ref = image.split("@", 1)
    if len(ref) == 2:
        return ref[1]
    name, _, tag = ref[0].rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag (that is `latest`)"
    assert tag != "latest", f"{image}: pinned to `latest`"
    return tag


def needed_paths() -> set[str]:
    """Top-level repository paths that `pip install -e .` and the harness at run time need."""
    need = {"pyproject.toml", "slurm"}  # slurm/profiles: harness/launch/profiles.py REPO_PROFILES
    if tomllib is not None:
        meta = tomllib.loads((REPO / "pyproject.toml").read_text())
        readme = meta["project"].get("readme")
        if isinstance(readme, str):
            need.add(readme)
        for pattern in meta["tool"]["setuptools"]["packages"]["find"]["include"]:
            need.add(pattern.rstrip("*").rstrip("."))
        assert EXTRAS <= set(meta["project"]["optional-dependencies"]), "pyproject lost an extra the images install"
    else:  # pragma: no cover
        need |= {"README.md", "harness", "analysis"}
    return need


# ---------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def apptainer():
    header, sections = parse_def(DEF.read_text())
    return header, sections, def_arguments(sections)


@pytest.fixture(scope="module")
def docker():
    return parse_dockerfile(DOCKERFILE.read_text())


def install_script(instructions) -> str:
    runs = [body for word, _, body, _ in instructions if word == "RUN" and body is not None]
    assert len(runs) == 1, f"the Dockerfile should have one heredoc RUN (the install script), found {len(runs)}"
    return runs[0]


# ---------------------------------------------------------------------------------------- Apptainer

def test_def_header_and_sections(apptainer):
    header, sections, args = apptainer
    assert header.get("Bootstrap") == "docker", header
    assert set(header) <= {"Bootstrap", "From", "Stage", "Fingerprints"}, header
    assert "From" in header
    image = render(header["From"], args)
    assert image.startswith("nvcr.io/nvidia/pytorch:"), image
    assert re.fullmatch(r"\d\d\.\d\d-py3", pinned_tag(image)), image
    names = [name for name, _, _ in sections]
    unknown = sorted(set(names) - APPTAINER_SECTIONS)
    assert not unknown, f"unknown sections: {unknown}"
    assert len(names) == len(set(names)), f"a section given twice: {names}"
    for name in ("files", "post", "environment", "runscript", "test", "labels", "help", "arguments"):
        assert name in names, f"no %{name}"
    for name, sargs, body in sections:  # every {{ }} has a default
        render(sargs + "\n" + body, args)


def test_def_files_exist_and_cover_the_install(apptainer):
    _, sections, _ = apptainer
    copied = set()
    for line in section(sections, "files").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        assert len(words) in (1, 2), f"%files line: {line!r}"
        src = words[0]
        assert not Path(src).is_absolute(), f"%files source {src!r} must be relative to the repository root"
        assert (REPO / src).exists(), f"%files source {src!r} does not exist in the repository"
        assert words[-1].startswith(INSTALL_DIR), f"%files destination {words[-1]!r} outside {INSTALL_DIR}"
        copied.add(Path(src).parts[0])
    assert copied & {".venv", "results", "jobs", ".git"} == set(), copied
    missing = needed_paths() - copied
    assert not missing, f"%files does not copy {sorted(missing)}"
    setup = section(sections, "setup")
    assert INSTALL_DIR in setup, "%setup must create the install directory before %files copies into it"


def test_def_scripts_parse(apptainer):
    _, sections, args = apptainer
    for name, sargs, body in sections:
        if name in {"setup", "post", "test", "runscript", "startscript", "environment"}:
            bash_n(render(body, args), f"%{name}")
    post_args = [sargs for name, sargs, _ in sections if name == "post"][0]
    assert post_args == "-c /bin/bash", f"%post must run under bash (it uses pipefail): {post_args!r}"
    assert 'exec harness "$@"' in section(sections, "runscript")
    assert "harness doctor" in section(sections, "test")
    env = section(sections, "environment")
    assert 'HARNESS_ASSETS="${HARNESS_ASSETS:-/assets}"' in env, "HARNESS_ASSETS must default to /assets"
    helptext = section(sections, "help")
    assert "apptainer build harness.sif containers/harness.def" in helptext
    assert "--nv" in helptext and "/assets" in helptext


# ---------------------------------------------------------------------------------------- Dockerfile

def test_dockerfile_instructions(docker):
    for word, rest, _, line in docker:
        assert word in DOCKER_INSTRUCTIONS, f"Dockerfile line {line}: unknown instruction {word}"
    froms = [(rest, line) for word, rest, _, line in docker if word == "FROM"]
    assert len(froms) == 1, "one stage expected"
    raw = froms[0][0].split()[0]
    assert "$" in raw, f"FROM {raw}: the base must be a build ARG so that sites can change it"
    image = expand(raw, docker_args(docker))
    assert image.startswith("nvcr.io/nvidia/pytorch:"), image
    assert re.fullmatch(r"\d\d\.\d\d-py3", pinned_tag(image)), image
    assert not any(word == "ADD" for word, *_ in docker), "COPY, not ADD (no remote or archive sources)"
    entry = [rest for word, rest, _, _ in docker if word == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["harness"], entry
    env = " ".join(rest for word, rest, _, _ in docker if word == "ENV")
    assert re.search(r"\bHARNESS_ASSETS=/assets\b", env), env


def test_dockerfile_copies_only_what_exists_and_is_needed(docker):
    copied = set()
    for word, rest, _, line in docker:
        if word != "COPY":
            continue
        for src in copy_sources(rest):
            assert src not in {".", "./", "*"}, f"Dockerfile line {line}: copies the whole context (.venv, results)"
            assert not Path(src).is_absolute() and ".." not in Path(src).parts, src
            assert (REPO / src).exists(), f"Dockerfile line {line}: COPY source {src!r} is not in the repository"
            copied.add(Path(src).parts[0])
        assert shlex.split(rest)[-1].startswith(INSTALL_DIR), f"Dockerfile line {line}: destination outside"
    missing = needed_paths() - copied
    assert not missing, f"the Dockerfile does not copy {sorted(missing)}"


def test_dockerfile_runs_parse(docker):
    shell = [json.loads(rest) for word, rest, _, _ in docker if word == "SHELL"]
    assert shell and shell[-1][0] == "/bin/bash", "RUN must use bash (the script uses pipefail)"
    for word, rest, body, line in docker:
        if word != "RUN":
            continue
        if body is not None:
            bash_n(body, f"Dockerfile line {line}: RUN heredoc")
            assert body.startswith("#!/usr/bin/env bash"), "the heredoc runs as a bash script"
        elif not rest.startswith("["):  # exec form is not shell
            bash_n(rest, f"Dockerfile line {line}: RUN")
    header = DOCKERFILE.read_text().splitlines()[0]
    assert header.startswith("# syntax=docker/dockerfile:1"), "heredocs need the dockerfile:1 syntax (BuildKit)"


# ---------------------------------------------------------------------------------------- the two agree

def test_same_base_copies_install_and_self_test(apptainer, docker):
    header, sections, args = apptainer
    assert render(header["From"], args) == expand(
        [rest for word, rest, _, _ in docker if word == "FROM"][0].split()[0], docker_args(docker)
    ), "harness.def and the Dockerfile name different base images"

    def_copied = {shlex.split(line)[0].rstrip("/") for line in shell_lines(section(sections, "files"))}
    docker_copied = {src.rstrip("/") for word, rest, _, _ in docker if word == "COPY" for src in copy_sources(rest)}
    assert def_copied == docker_copied, f"copied paths differ: {def_copied ^ docker_copied}"

    post = shell_lines(section(sections, "post"))
    run = shell_lines(install_script(docker))
    assert post == run, "harness.def %post and the Dockerfile's install RUN differ:\n" + "\n".join(
        f"  def: {a!r}\n  Dockerfile: {b!r}" for a, b in zip(post + [""] * len(run), run + [""] * len(post)) if a != b
    )

    for lines, what in ((post, "harness.def"), (run, "Dockerfile")):
        installs = [ln for ln in lines if re.search(r"\bpip install\b", ln) and ("$SRC" in ln or INSTALL_DIR in ln)]
        assert len(installs) == 1, f"{what}: one install of the checkout expected: {installs}"
        m = re.search(r"\[([\w,\s-]+)\]", installs[0])
        assert m and {e.strip() for e in m.group(1).split(",")} == EXTRAS, f"{what}: extras {installs[0]!r}"
        assert "-e" in shlex.split(installs[0]), f"{what}: editable install (catalog.yaml, slurm/profiles)"
        # the torch of the image is kept: pins are added to PIP_CONSTRAINT and checked afterwards
        assert any("PIP_CONSTRAINT=" in ln and "$pins" in ln for ln in lines), f"{what}: no torch constraint"
        assert lines.index(next(ln for ln in lines if ln.startswith("export PIP_CONSTRAINT="))) < lines.index(
            installs[0]), f"{what}: the constraint must be set before the install"
        assert any("pip replaced the image's torch" in ln for ln in lines), f"{what}: torch not re-checked"
        assert not any(re.search(r"pip install[^|;&]*\btorch\b", ln) for ln in lines), f"{what}: installs torch"
        tail = lines[-len(SELF_TEST):]
        assert tail == SELF_TEST, f"{what}: the self-test at the end of the install is {tail}"


# ------------------------------------------------------------- the batch script that runs inside it
# (a real build needs a container runtime, network and ~30 GB: `bash containers/build.sh` at a site)

def _container_profile(tmp_path: Path, name: str, image: str) -> Path:
    """The repository's profile, its venv line dropped (the image has the environment), with `container:`."""
    from test_slurm import PROFILES

    text = "\n".join(line for line in (PROFILES / f"{name}.yaml").read_text().splitlines()
                     if not line.strip().startswith("venv:"))
    path = tmp_path / f"{name}-container.yaml"
    path.write_text(text + f"\ncontainer: {image}\ncontainer_args: [--bind, /shared]\n")
    return path


@pytest.mark.parametrize("name,image", [("gh200", "/shared/images/harness-aarch64.sif"),
                                        ("a100", "/shared/images/harness-x86_64.sif")])
def test_dry_run_with_container_matches_golden(name: str, image: str, tmp_path: Path) -> None:
    from conftest import TINY_GRID, harness
    from test_slurm import GOLDEN, _normalise

    (tmp_path / "tiny.yaml").write_text(TINY_GRID)
    r = harness("submit", "--grid", "tiny.yaml", "--profile", str(_container_profile(tmp_path, name, image)),
                "--jobs", "jobs", "--results", "results", "--dry-run", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    got = _normalise(r.stdout, tmp_path)
    # each task runs inside the image, on the GPU (--nv), the words quoted; no host interpreter
    assert f"apptainer exec --nv --bind /shared {image} python3 -u -m submitit.core._submit" in got, got
    assert "export HARNESS_NEEDS=cuda" in got and "<PYTHON>" not in got
    golden = GOLDEN / f"dry-run-{name}-container.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert golden.is_file(), f"{golden} missing; create it with UPDATE_GOLDEN=1"
    assert got == golden.read_text(), f"dry-run text changed; if intended, regenerate with UPDATE_GOLDEN=1\n{got}"


def test_container_values_are_quoted_and_checked(tmp_path: Path) -> None:
    from harness.errors import UsageError
    from harness.launch.profiles import load_profile

    odd = load_profile(_container_profile(tmp_path, "gh200", "/shared/my images/h;arness.sif"))
    assert odd.python_command("x") == "apptainer exec --nv --bind /shared '/shared/my images/h;arness.sif' python3"
    (tmp_path / "rel.yaml").write_text("container: images/harness.sif\n")
    with pytest.raises(UsageError, match=r"container: .*expected an absolute path"):
        load_profile(tmp_path / "rel.yaml")
    (tmp_path / "cpu.yaml").write_text("container: /x.sif\n")
    assert load_profile(tmp_path / "cpu.yaml").python_command("x") == "apptainer exec /x.sif python3"  # no --nv
