"""The launch files of docs/clusters (`ray up`, a KubeRay RayJob, Slurm with torchrun) and
docs/multi-node.md: they parse, every diversynth command in them is one the command line
takes, their config validates, and they install the torch pair scripts/setup.sh pins."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from diversynth.config import ConfigError, load_config

CLUSTERS = REPO / "docs" / "clusters"
RAY_CLUSTER = CLUSTERS / "ray-cluster.yaml"
RAYJOB = CLUSTERS / "rayjob.yaml"
SLURM = CLUSTERS / "slurm-torchrun.sh"
CONFIG = CLUSTERS / "config.yaml"
DOCKERFILE = CLUSTERS / "Dockerfile"
GUIDE = REPO / "docs" / "multi-node.md"
LAUNCH_FILES = [RAY_CLUSTER, RAYJOB, SLURM, CONFIG, DOCKERFILE]

# `diversynth COMMAND ARGS...` up to the end of the shell word list: a quote that closes a
# `ray exec '...'`, a comment, `;`, `|`, `&`, `)` or a backquote. In the launch files, prose
# never puts a word after "diversynth" (it says "the project"), so every match is a command.
COMMAND = re.compile(r"""\bdiversynth[ \t]+[a-z][\w-]*(?:[ \t]+(?:"[^"\n]*"|[^\s'";|&#)`]+))*""")
PIN = re.compile(r"\b(torch|torchvision)(?:==| )(\d+\.\d+\.\d+)\b")


def _setup_pins() -> dict[str, str]:
    """scripts/setup.sh's TORCH_PINS: {"torch": "2.14.1", "torchvision": "0.29.1"}."""
    found = re.search(r"^TORCH_PINS=\(([^)]*)\)", (REPO / "scripts" / "setup.sh").read_text(), re.M)
    assert found, "scripts/setup.sh has no TORCH_PINS=(...) line"
    pins = dict(pin.split("==") for pin in found.group(1).split())
    assert set(pins) == {"torch", "torchvision"}, pins
    return pins


def _locked(package: str) -> str:
    found = re.search(rf"^{package}==(\S+)$", (REPO / "requirements-lock.txt").read_text(), re.M)
    assert found, f"requirements-lock.txt has no {package} pin"
    return found.group(1)


def _gpus(resources: dict[str, Any]) -> int:
    return int((resources.get("limits") or {}).get("nvidia.com/gpu", 0))


def _pool_size() -> int:
    """The generation workers docs/clusters/config.yaml asks for (one a GPU)."""
    return int(yaml.safe_load(CONFIG.read_text())["generate"]["ray"]["workers"])


def test_ray_cluster_yaml_is_a_ray_up_config() -> None:
    cluster = yaml.safe_load(RAY_CLUSTER.read_text())
    assert cluster["cluster_name"]
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    workers = {name: kind for name, kind in types.items() if name != cluster["head_node_type"]}
    assert workers and all(kind["resources"].get("GPU", 0) > 0 for kind in workers.values())
    # the head keeps its GPU from the generation workers
    assert any("--head" in c and "--num-gpus=0" in c for c in cluster["head_start_ray_commands"])
    setup = " ".join(cluster["setup_commands"])
    for name, version in _setup_pins().items():
        assert f"{name}=={version}" in setup
    assert "diversynth[ray]" in setup and "/data" in setup  # the shared storage
    for source in cluster["file_mounts"].values():  # copied from the repository root
        assert (REPO / source).is_file(), source
    # one generation worker a GPU of the worker nodes
    gpus = sum(kind["max_workers"] * kind["resources"]["GPU"] for kind in workers.values())
    assert _pool_size() == gpus, f"generate.ray.workers {_pool_size()}, worker GPUs {gpus}"


def test_ray_cluster_yaml_passes_rays_own_check() -> None:
    """`ray up`'s check of a cluster config: its schema, after filling in its defaults."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(yaml.safe_load(RAY_CLUSTER.read_text())))


def test_rayjob_yaml_is_a_kuberay_rayjob() -> None:
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"] == "diversynth run /data/config.yaml --out /data/run"
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == _locked("ray")
    assert f"rayproject/ray:{_locked('ray')}-" in DOCKERFILE.read_text()
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    claims = set()
    for group in groups:
        pod = group["template"]["spec"]
        ray_container = pod["containers"][0]  # KubeRay's Ray container comes first
        assert ray_container["image"] == groups[0]["template"]["spec"]["containers"][0]["image"]
        mounts = {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims.add(volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"])
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert len(claims) == 1  # one shared volume at /data on every pod
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    gpus = sum(group["replicas"] * _gpus(group["template"]["spec"]["containers"][0]["resources"])
               for group in spec["workerGroupSpecs"])  # fmt: skip
    assert _pool_size() == gpus, f"generate.ray.workers {_pool_size()}, worker GPUs {gpus}"


def test_slurm_script_restarts_torchrun() -> None:
    result = subprocess.run(["bash", "-n", str(SLURM)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = SLURM.read_text()
    lines = text.replace("\\\n", " ").splitlines()
    # sbatch reads #SBATCH lines only before the first command
    first_command = next(k for k, line in enumerate(lines)
                         if line.strip() and not line.lstrip().startswith("#"))  # fmt: skip
    directives = [k for k, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command
    assert any(line.startswith("#SBATCH --nodes=") for line in lines)
    assert any(line.startswith("#SBATCH --gpus-per-node=") for line in lines)
    assert "scontrol show hostnames" in text
    # torchrun with the store setting a lost node's restart needs
    (launch,) = [k for k, line in enumerate(lines) if line.startswith("srun diversynth torchrun ")]
    for flag in ("--nnodes=", "--nproc-per-node=", "--rdzv-backend=c10d", "--rdzv-endpoint=",
                 "--rdzv-id=", "--max-restarts=", "-m diversynth train"):  # fmt: skip
        assert flag in lines[launch], flag


def test_pinned_versions_match_setup_sh() -> None:
    """Every torch or torchvision version the launch files and the guide name is the one
    scripts/setup.sh installs."""
    pins = _setup_pins()
    for path in [*LAUNCH_FILES, GUIDE]:
        for name, version in PIN.findall(path.read_text()):
            assert version == pins[name], f"{path.name}: {name} {version}, setup.sh {pins[name]}"
    for path in (RAY_CLUSTER, DOCKERFILE):
        assert {name for name, _ in PIN.findall(path.read_text())} == set(pins), path.name


def _commands() -> list[tuple[str, list[str], bool]]:
    """(where, argv after `diversynth`, whole) of every diversynth command: in the launch
    files and the guide's code blocks (whole command lines), and in the guide's inline code
    (the command and its options only: `diversynth run` alone names the command)."""
    found = []

    def scan(where: str, text: str, whole: bool) -> None:
        for match in COMMAND.finditer(text.replace("\\\n", " ")):
            args = shlex.split(match.group(0))[1:]
            if args[0] == "torchrun" and "-m" in args:  # torchrun's options, then ours
                inner = args.index("-m")
                found.append((where, args[:inner], whole))
                args = args[inner + 2 :]
            found.append((where, args, whole))

    for path in LAUNCH_FILES:
        scan(path.name, path.read_text(), True)
    guide = GUIDE.read_text()
    blocks = re.findall(r"^```\w*\n(.*?)^```", guide, re.M | re.S)
    for block in blocks:
        scan(GUIDE.name, block, True)
    prose = re.sub(r"^```\w*\n.*?^```", "", guide, flags=re.M | re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        scan(GUIDE.name, span.replace("\n", " "), False)
    return found


def test_every_diversynth_command_is_a_real_one() -> None:
    """Each command's --help runs, its options are the command's own, and a whole command
    line parses (arguments, option values) as the command line would take it."""
    import typer.main
    from typer.testing import CliRunner

    from diversynth.commands.cli import app
    from diversynth.pipeline import parse_stage_list

    group = typer.main.get_command(app)
    commands = _commands()
    named = {args[0] for _, args, _ in commands}
    assert {"run", "train", "generate"} <= named, named
    for where, args in {(w, tuple(a)) for w, a, _ in commands}:
        assert args[0] in group.commands, f"{where}: diversynth {args[0]} is no command"
    runner = CliRunner()
    for name in sorted(named):
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (name, result.output)
    for where, args, whole in commands:
        if args[0] == "torchrun":  # every option is torchrun's own
            from torch.distributed.run import parse_args

            if whole:
                parse_args([*args[1:], "-m", "diversynth"])
            continue
        command = group.commands[args[0]]
        options = {opt for param in command.params for opt in param.opts}
        for arg in args[1:]:
            if arg.startswith("-"):
                assert arg.split("=")[0] in options, f"{where}: diversynth {shlex.join(args)}"
        if whole:
            try:
                context = command.make_context(args[0], list(args[1:]))
                if context.params.get("stages"):
                    parse_stage_list(context.params["stages"])
            except Exception as exc:
                raise AssertionError(f"{where}: diversynth {shlex.join(args)}: {exc}") from exc


def test_cluster_config_validates(tmp_path: Path) -> None:
    """docs/clusters/config.yaml through the loader `diversynth run` uses, with its
    ImageNet folder (on the cluster's shared storage) standing in here."""
    root = Path(yaml.safe_load(CONFIG.read_text())["data"]["root"])
    config = load_config(CONFIG, [f"data.root={tmp_path}"])
    assert config.generate is not None and config.generate.engine == "ray"
    assert config.generate.ray.address == "auto"
    assert config.generate.ray.gpus_per_worker == 1  # not read from an autoscaling cluster
    assert config.data is not None and config.data.root == tmp_path.resolve()
    # as it is: valid where ImageNet is there, and else wrong in data.root alone
    if root.exists():
        load_config(CONFIG)
    else:
        with pytest.raises(ConfigError) as failed:
            load_config(CONFIG)
        assert str(failed.value).splitlines() == [
            f"data.root: path does not exist (got {str(root)!r})"
        ]
