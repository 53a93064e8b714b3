"""Every file under `cluster/` is parsed and checked for what a working cluster needs.

Launcher YAMLs (`ray up`) go through Ray's own validator, offline:
`ray.autoscaler._private.util.prepare_config` merges the provider's `defaults.yaml` (shipped
in the Ray wheel, no cloud SDK involved), folds `setup_commands` into the head/worker
commands and fills per-type `min_workers`/`max_workers`; `validate_config` then checks the
result against Ray's `ray-schema.json` (no unknown keys, integer resources, command lists,
docker fields) and its cross-field rules (`head_node_type` is one of the node types, the sum
of `min_workers` fits in `max_workers`). What `ray up` does after that cannot run here:
`_bootstrap_config` imports boto3 / googleapiclient and calls the cloud (IAM role, security
group, subnet, AMI or project lookups), which needs credentials.

KubeRay manifests have no validator in the Ray wheel (their CRD schemas live in the
operator), so they are parsed and checked field by field for what rayaccel relies on.
"""

from __future__ import annotations

import copy
import re
import shlex

import jsonschema
import pytest
import ray
import yaml
from helpers import REPO_ROOT
from ray.autoscaler._private.util import prepare_config, validate_config

from rayaccel.config import load_job

CLUSTER_DIR = REPO_ROOT / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
KUBERAY_MANIFESTS = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
OTHER_FILES = ["README.md", "Dockerfile", "Dockerfile.dockerignore"]
RAY_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"
RAYACCEL_IMAGE = "rayaccel:latest"
IMAGE_CHECKOUT = "/home/ray/rayaccel"


def read_yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER_DIR / name).read_text())


def test_every_cluster_file_is_checked():
    """A new file under cluster/ must get a check here before it ships."""
    present = sorted(p.relative_to(CLUSTER_DIR).as_posix() for p in CLUSTER_DIR.rglob("*"))
    assert present == sorted(LAUNCHER_CONFIGS + KUBERAY_MANIFESTS + OTHER_FILES)
    for name in LAUNCHER_CONFIGS + KUBERAY_MANIFESTS:
        assert isinstance(read_yaml(name), dict), name


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_validator(name):
    validate_config(prepare_config(read_yaml(name)))


def test_rays_validator_rejects_a_broken_config():
    """The validator is not a no-op: fractional resources and unknown keys fail."""
    raw = read_yaml("aws.yaml")
    fractional = copy.deepcopy(raw)
    fractional["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    unknown = copy.deepcopy(raw)
    unknown["idle_timeout_minute"] = 5
    for broken in (fractional, unknown):
        with pytest.raises(jsonschema.ValidationError):
            validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_has_cpu_and_gpu_node_types(name):
    config = prepare_config(read_yaml(name))
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no training or decode work on the head"
    workers = {k: v for k, v in node_types.items() if k != config["head_node_type"]}
    cpu_only = [v for v in workers.values() if v["resources"].get("CPU", 0) > 0]
    cpu_only = [v for v in cpu_only if v["resources"].get("GPU", 0) == 0]
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) > 0]
    assert cpu_only and gpu, f"{name}: needs a CPU-only and a GPU node type"
    for node_type in workers.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["max_workers"] > 0
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_installs_rayaccel_on_every_node(name):
    config = prepare_config(read_yaml(name))
    # The checkout is copied to ~/rayaccel and installed from there on head and workers.
    assert config["file_mounts"] == {"~/rayaccel": "."}
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert any(re.search(r"pip install .*-e ~/rayaccel", c) for c in commands), commands
    # The container's Ray and Python match what rayaccel pins (ray 2.60, Python >= 3.11).
    assert config["docker"]["image"] == RAY_IMAGE


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_gpu_nodes_are_real_gpu_machines(name):
    gpu = read_yaml(name)["available_node_types"]["gpu_worker"]
    node_config = gpu["node_config"]
    if name == "aws.yaml":
        assert node_config["InstanceType"].startswith(("g5.", "g6.", "p4", "p5"))
    else:
        # G2/A2 carry their GPUs; other types would need guestAccelerators.
        machine = node_config["machineType"]
        assert machine.startswith(("g2-", "a2-")) or node_config.get("guestAccelerators")
        assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE"


def worker_groups(spec: dict) -> dict[str, dict]:
    return {group["groupName"]: group for group in spec["workerGroupSpecs"]}


def container(pod_template: dict) -> dict:
    (only,) = pod_template["spec"]["containers"]
    return only


def check_raycluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert container(head["template"])["image"] == RAYACCEL_IMAGE
    groups = worker_groups(spec)
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > 0
        assert isinstance(group["rayStartParams"], dict)
        assert container(group["template"])["image"] == RAYACCEL_IMAGE
    cpu_limits = container(groups["cpu-workers"]["template"])["resources"]["limits"]
    gpu_limits = container(groups["gpu-workers"]["template"])["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1


def test_raycluster_manifest():
    manifest = read_yaml("kuberay-raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayCluster"
    check_raycluster_spec(manifest["spec"])


def test_rayjob_manifest_runs_a_shipped_job(monkeypatch):
    manifest = read_yaml("kuberay-rayjob.yaml")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] == "K8sJobMode"
    check_raycluster_spec(spec["rayClusterSpec"])

    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["rayaccel", "run"]
    job_file, overrides = command[2], command[3:]
    assert re.fullmatch(r"jobs/[\w.-]+\.yaml", job_file)
    # The job runs from the image's checkout, which is this repository: its job file and
    # relative data paths must resolve from the repository root.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == IMAGE_CHECKOUT
    monkeypatch.chdir(REPO_ROOT)
    load_job(job_file, overrides, check_paths=True)


def test_rayjob_embeds_the_raycluster_spec():
    """The two manifests describe one cluster; an edit to one must reach the other."""
    cluster = read_yaml("kuberay-raycluster.yaml")["spec"]
    assert read_yaml("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"] == cluster


def test_dockerfile_builds_the_documented_image():
    dockerfile = (CLUSTER_DIR / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(RAY_IMAGE)}$", dockerfile, re.M)
    assert re.search(rf"^WORKDIR {IMAGE_CHECKOUT}$", dockerfile, re.M)
    assert re.search(r"^RUN pip install .*-e \.$", dockerfile, re.M)
    assert "docker build -f cluster/Dockerfile -t rayaccel:latest ." in dockerfile
    ignored = (CLUSTER_DIR / "Dockerfile.dockerignore").read_text().split()
    assert {".git", "runs"} <= set(ignored)


def test_readme_covers_the_cluster_workflow():
    readme = (CLUSTER_DIR / "README.md").read_text()
    for needle in (
        "ray up cluster/aws.yaml",
        "ray job submit --address",
        "rayaccel submit",
        "ray down cluster/aws.yaml",
        "kubectl apply -f cluster/kuberay-rayjob.yaml",
        "kubectl port-forward",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH",
        "storage_path: s3://",
    ):
        assert needle in readme, needle
