"""The validated run configuration: one pydantic model, every section strict (unknown keys fail).

Ray-free: the cluster section is plain data that cluster/ turns into Ray Train's configs.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from data_pipeline.plan import DEFAULT_LANES, supported_world_sizes


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    train: str | None = Field(None, description="required: 'digits' (built in, written to the cache on first use) or "
                              "shards: a directory with manifest.json, a manifest URL, or a brace pattern of .tar URLs")
    probe_train: str | None = Field(None, description="labelled shards for the probe's training split; default: `train`")
    probe_test: str | None = Field(None, description="held-out shards for the probe; default for digits: the built-in holdout")
    image_size: int = Field(32, ge=8, le=1024, description="side of the images the network is evaluated on (probe, "
                            "export) and, unless view_size, trained on")
    view_size: int | None = Field(None, ge=8, le=1024, description="simclr: side of the global training views "
                                  "(e.g. 24 with image_size 32: 0.56x the pixels per view); None: image_size")
    view_size_start: int | None = Field(None, ge=8, le=1024, description="simclr: progressive resizing — the global "
                                        "views' side at the start, growing to view_size by data.view_ramp of the "
                                        "schedule (pretrain/view_ramp.py); None: the full side throughout")
    view_ramp: float = Field(0.5, gt=0.0, le=1.0, description="fraction of the schedule over which the views grow "
                             "from view_size_start to view_size")
    blur: bool | None = Field(None, description="Gaussian blur in the view recipe; None: on above 32 px")
    global_scale: tuple[float, float] = Field((0.08, 1.0), description="crop area range (fraction of the image) "
                                              "of the global views")
    color_strength: float = Field(1.0, ge=0.0, le=1.25, description="colour jitter strength s of every view: "
                                  "brightness, contrast, saturation factors in [1 − 0.8s, 1 + 0.8s], hue shift "
                                  "in [−0.2s, 0.2s] (SimCLR's s; its CIFAR-10 runs used 0.5)")
    local_views: int = Field(0, ge=0, le=32, description="multi-crop (simclr): extra local views per image of "
                             "local_size px at local_scale, positives of the image's other views; 0: off")
    local_size: int = Field(16, ge=4, le=1024, description="side of the local views")
    local_scale: tuple[float, float] = Field((0.05, 0.14), description="crop area range of the local views")
    mode: Literal["exact", "resampled"] = "exact"
    shuffle_buffer: int = Field(2000, ge=0)
    loader_workers: int = Field(1, ge=0, description="DataLoader worker processes per training worker")
    lanes: int = Field(DEFAULT_LANES, ge=1, description="reading lanes that fix every global batch whatever the world size: "
                       "each world size the run may have must divide them (lanes=12 or 6 for cluster.workers=[1, 3])")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _area_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise PydanticCustomError("area_range", "must be [low, high] with 0 < low <= high <= 1 (fractions of "
                                      "the image's area)")
        return v


class ModelConfig(Strict):
    encoder: str = "bb_convnet_small"
    small_stem: bool = True
    norm: Literal["batch", "group", "none"] = "batch"
    proj_hidden: int = Field(512, ge=1)
    proj_dim: int = Field(128, ge=1)
    proj_layers: int = Field(2, ge=1)
    sync_batchnorm: bool = Field(True, description="SyncBatchNorm on GPU workers (CPU/gloo keeps per-worker BN)")


class RankingLoss(Strict):
    """Ranking-NCE (NT-Xent) over the gathered 2N×2N cosine similarities at temperature τ."""
    name: Literal["ranking"] = "ranking"
    temperature: float = Field(0.2, gt=0)


class RankingBlockwiseLoss(Strict):
    """The ranking-NCE loss and gradient computed over column blocks: O(B·block) memory."""
    name: Literal["ranking-blockwise"]
    temperature: float = Field(0.2, gt=0)
    block_size: int = Field(512, ge=1, description="tile side (512: tiles stay in cache)")


class BinaryLoss(Strict):
    """Binary (logistic) NCE with a learnable logit scale and bias: k shifted negatives, or all pairs (O(B²))."""
    name: Literal["binary"]
    num_negatives: int | None = Field(None, ge=1, description="negatives per anchor from shifts of the local batch; "
                                      "None: 1 (the all-pairs form takes every other view and no num_negatives)")
    all_pairs: bool = Field(False, description="the O(B^2) all-pairs sigmoid variant")
    init_logit_scale: float = Field(math.log(10.0), description="initial t' of the learnable scale t = exp(t') "
                                    "(SigLIP: log 10)")
    init_bias: float | None = Field(None, description="initial learnable bias b; None: -log k (the prior log-odds of "
                                    "a positive among k negatives), -10 for all_pairs (SigLIP); -10 also trains the shifted form "
                                    "under LARS at B >= 1024, where -log k stalls (docs/loss_quality.md)")

    @model_validator(mode="after")
    def _negatives(self) -> BinaryLoss:
        if self.all_pairs and self.num_negatives is not None:
            raise ValueError("num_negatives is not used with all_pairs=true (every other view is a negative)")
        if not self.all_pairs and self.num_negatives is None:
            self.num_negatives = 1
        return self


class SpectralLoss(Strict):
    """Spectral contrastive loss: −2·mean positive dot + μ·mean squared negative dot."""
    name: Literal["spectral"]
    mu: float = Field(1.0, gt=0, description="weight of the quadratic term")


# Each loss's own settings: a key the chosen loss does not use is an error naming it (tagged on loss.name).
LossConfig = Annotated[RankingLoss | RankingBlockwiseLoss | BinaryLoss | SpectralLoss, Field(discriminator="name")]
LOSSES: dict[str, type[Strict]] = {"ranking": RankingLoss, "ranking-blockwise": RankingBlockwiseLoss,
                                   "binary": BinaryLoss, "spectral": SpectralLoss}


class OptimConfig(Strict):
    name: Literal["lars", "adamw"] = Field("lars", description="default: lars for simclr, adamw for vae (LARS's "
                                           "trust ratio is a large-batch contrastive recipe)")
    lr: float | None = Field(None, gt=0, description="the lr at any batch size (wins over lr_at_256); None: "
                             "lr_at_256 scaled to the global batch B by `scaling`")
    lr_at_256: float | None = Field(None, gt=0, description="the lr at B = 256 when lr is None; None: lars 0.3, adamw 1e-3")
    scaling: Literal["linear", "sqrt"] = Field("linear", description="lr_at_256 to B: linear (·B/256) or sqrt "
                                               "(·√(B/256), SimCLR appendix B.1's rule for short training)")
    weight_decay: float | None = Field(None, ge=0, description="None: lars 1e-6, adamw 0.05; never on norms/biases")
    scalar_lr: float = Field(1e-3, gt=0, description="Adam's lr for 0-d parameters (a loss's log-scale and bias, a "
                             "VAE's log sigma), on the same warmup + cosine, no decay, whatever `name` is")
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class VAEConfig(Strict):
    latent_dim: int = Field(64, ge=1)
    beta: float = Field(1.0, ge=0, description="weight of the KL term: loss = recon + beta*KL (beta=1: -ELBO)")
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    sigma: float = Field(0.1, gt=0, description="std of the Gaussian likelihood (the initial value when learn_sigma)")
    learn_sigma: bool = Field(False, description="learn one shared log-sigma of the Gaussian likelihood")
    representation: Literal["mu", "features"] = "mu"
    decoder_width: int = Field(64, ge=8, description="channels of the decoder's last stage (doubling per stage, max 8x)")
    decoder_norm: Literal["batch", "group", "none"] = "batch"


class GANConfig(Strict):
    loss: Literal["minimax", "nonsaturating", "wgan"] = "nonsaturating"
    latent_dim: int = Field(64, ge=1)
    lr: float | None = Field(None, gt=0, description="None: 2e-4 (Adam) for minimax/nonsaturating, 5e-5 (RMSprop) for wgan")
    n_critic: int | None = Field(None, ge=1, description="None: 5 for wgan, 1 otherwise; the generator steps "
                                 "on every n_critic-th train step")
    clip: float = Field(0.01, gt=0, description="wgan: critic weights clipped to [-clip, clip]")
    gen_width: int = Field(64, ge=8, description="channels of the generator's last stage (doubling per stage, max 8x)")
    gen_norm: Literal["batch", "group", "none"] = "batch"


class ClusterConfig(Strict):
    workers: int | tuple[int, int] = Field(2, description="training workers (ranks): N, or [min, max] for an elastic "
                                           "run that continues with fewer workers after losing some and grows back")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="0 (CPU, gloo) or 1 (one GPU per worker, NCCL)")
    address: str | None = Field(None, description="existing Ray cluster (ray://… or host:port); None: embedded local Ray")
    storage_path: str | None = Field(None, description="local dir, NFS path or s3://…; None: ~/bigbatch_runs")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts after failures (-1: unlimited)")
    resize_interval_s: float = Field(60.0, gt=0, description="elastic runs (workers=[min, max]): how often a running "
                                     "group checks whether more workers fit (growing restarts it from its latest "
                                     "checkpoint)")
    num_to_keep: int = Field(2, ge=1)
    threads_per_worker: int | None = Field(None, ge=1, description="torch intra-op threads; None: cpus_per_worker")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_range(cls, v: Any) -> Any:
        pair = isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                   for x in v)
        one = isinstance(v, int) and not isinstance(v, bool)
        low, high = (v, v) if one else tuple(v) if pair else (0, 0)
        if not 1 <= low <= high:
            raise PydanticCustomError("workers_range", "must be a number >= 1 or [min, max] with 1 <= min <= max")
        return v if one else (low, high)

    @property
    def world_sizes(self) -> list[int]:
        """Every world size the run may have."""
        low, high = (self.workers, self.workers) if isinstance(self.workers, int) else self.workers
        return list(range(low, high + 1))

    @property
    def max_workers(self) -> int:
        return self.world_sizes[-1]

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpu(cls, v: float) -> float:
        """One DDP rank drives one GPU: a fraction puts two NCCL ranks on one GPU, more than one leaves GPUs idle."""
        if v not in (0, 1):
            raise PydanticCustomError("whole_gpu", "must be 0 (CPU workers) or 1 (one GPU per worker): NCCL needs a "
                                      "whole GPU per rank and a worker drives one GPU; for more GPUs use more workers "
                                      "(cluster.workers=N)")
        return v


Baseline = Literal["pixels", "pca", "ppca", "random-init"]  # the classical representations eval/run_probe.py probes
BASELINES: tuple[str, ...] = get_args(Baseline)


class EvalConfig(Strict):
    probe: bool = True
    knn: bool = True
    every_k_checkpoints: int = Field(0, ge=0, description="also probe every k-th checkpoint (0: only the final one)")
    baselines: list[Baseline] = Field(default_factory=list)
    num_cpus: float = Field(1.0, ge=0, description="CPUs of the Ray task that runs each probe")
    num_gpus: float | None = Field(None, ge=0, description="GPUs of the probe's Ray task; None: 1 when the "
                                   "workers use GPUs (cluster.gpus_per_worker > 0), else 0")


class TrackingConfig(Strict):
    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], description="where the driver logs config, metrics, probe "
        "results and the report: tensorboard (run_dir/tb), mlflow (bigbatch[mlflow]), wandb (bigbatch[wandb])")
    project: str = Field("bigbatch", description="the MLflow experiment / W&B project the run goes to")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; None: MLFLOW_TRACKING_URI or MLflow's default")
    wandb_entity: str | None = Field(None, description="W&B entity (team or user); None: the login's default. "
                                     "WANDB_MODE=offline keeps the run in run_dir/wandb for `wandb sync`")


class RunConfig(Strict):
    name: str | None = Field(None, description="run name; rerunning with the same name resumes. None: generated")
    method: Literal["simclr", "vae", "gan"] = "simclr"
    batch_size: int = Field(256, ge=2, description="global batch (images) across all workers")
    steps: int | None = Field(None, ge=1, description="optimiser steps; None: from epochs")
    epochs: float | None = Field(None, gt=0)
    budget_minutes: float | None = Field(None, gt=0, description="wall-clock budget of training: stop within about "
                                         "a step after it (final checkpoint, then the probe). Counts training "
                                         "time after start-up, summed over resumed attempts")
    schedule_by: Literal["steps", "budget"] = Field("steps", description="what the lr's warmup + cosine run over: "
                                                    "steps (the steps/epochs length; a budget that ends first "
                                                    "truncates it) or budget (the fraction of budget_minutes spent, "
                                                    "or of the steps if they end first: the whole budget is used "
                                                    "at any machine speed)")
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = Field(True, description="NHWC weights and images for conv nets: oneDNN (CPU) and tensor "
                                "cores run them faster; numerics unchanged up to summation order")
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    log_batch_keys: bool = Field(False, description="debug: gather every step's sample keys to rank 0 (one more "
                                 "collective per step) and log their SHA-1, one per step since the last log, as "
                                 "batch_keys: the global batches of runs with any world size compare equal")
    deterministic: bool = Field(False, description="deterministic kernels only (an op without one raises), fixed "
                                "cuBLAS workspace, no cuDNN autotuning; slower")
    tf32: bool = Field(True, description="CUDA: fp32 matmuls/convolutions on TF32 tensor cores (fp32 accumulate); "
                       "false: full fp32")
    data: DataConfig = Field(default_factory=dict, validate_default=True)  # {} → the validator asks for data.train
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig | None = Field(None, description="simclr only")
    optim: OptimConfig | None = Field(None, description="simclr and vae (the GAN's optimisers are in gan)")
    vae: VAEConfig | None = Field(None, description="vae only")
    gan: GANConfig | None = Field(None, description="gan only")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("data", mode="before")
    @classmethod
    def _train_given(cls, data: Any) -> Any:
        """No silent fallback to the digits: presets about other data leave data.train to the command line."""
        train = data.get("train") if isinstance(data, dict) else getattr(data, "train", None)
        if train is None:
            raise PydanticCustomError("data_train_required", "data.train is required: give data.train=SHARDS (a "
                                      "directory with manifest.json, a manifest URL or a brace pattern of .tar URLs; "
                                      "'digits' for the built-in digits)")
        return data

    @field_validator("name", mode="before")
    @classmethod
    def _name_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not RUN_NAME.fullmatch(v) or v in (".", "..")):
            raise ValueError(f"run name {v!r}: use letters, digits, '.', '_' and '-' only (a directory name "
                             "inside the runs directory, not a path)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _sections_of_method(cls, data: Any) -> Any:
        """Fill the sections the method uses with their defaults; a section it ignores is an error."""
        if not isinstance(data, dict):
            return data
        data, method = dict(data), data.get("method", "simclr")
        unused = [section for section, methods in METHOD_SECTIONS.items() if method not in methods and data.get(section)]
        if unused:
            raise PydanticCustomError("unused_section", f"{', '.join(unused)}: not used by method={method}; remove "
                                      f"{'it' if len(unused) == 1 else 'them'}")
        for section, methods in METHOD_SECTIONS.items():
            if method not in methods:
                data[section] = None
            elif data.get(section) is None:
                data[section] = {}
        if isinstance(data["optim"], dict) and "name" not in data["optim"]:
            data["optim"] = {**data["optim"], "name": "adamw" if method == "vae" else "lars"}
        if isinstance(data["loss"], dict) and "name" not in data["loss"]:
            data["loss"] = {**data["loss"], "name": "ranking"}
        return data

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        lanes, sizes = self.data.lanes, self.cluster.world_sizes
        for w in sizes:
            if self.batch_size % w:
                raise ValueError(f"batch_size={self.batch_size} must be divisible by cluster.workers={w} (the "
                                 "global batch is split equally over the workers)")
            if lanes % w:
                ok = ", ".join(map(str, supported_world_sizes(lanes, self.batch_size)))
                who = f"cluster.workers={w}" if len(sizes) == 1 else \
                    f"cluster.workers=[{sizes[0]}, {sizes[-1]}]: {w}"
                raise ValueError(f"{who} does not divide data.lanes={lanes}: with data.lanes={lanes} and "
                                 f"batch_size={self.batch_size} the supported worker counts are {ok}; "
                                 f"data.lanes={_lanes_for(sizes, lanes, self.batch_size)} fits "
                                 + (f"{w}" if len(sizes) == 1 else f"every count in {sizes[0]}..{sizes[-1]}"))
        if self.data.local_views and self.method != "simclr":
            raise ValueError(f"data.local_views={self.data.local_views}: multi-crop views are for method=simclr "
                             f"(method={self.method} models one unaugmented view); set data.local_views=0")
        if self.data.view_size is not None and self.method != "simclr":
            raise ValueError(f"data.view_size={self.data.view_size}: a training view size apart from data.image_size "
                             f"is for method=simclr (method={self.method} generates data.image_size images); unset it")
        if self.data.view_size_start is not None:
            full = self.data.view_size or self.data.image_size
            if self.method != "simclr":
                raise ValueError(f"data.view_size_start={self.data.view_size_start}: progressive view sizes are for "
                                 f"method=simclr (method={self.method}); unset it")
            if self.data.view_size_start > full:
                raise ValueError(f"data.view_size_start={self.data.view_size_start}: larger than the views' side "
                                 f"{full} (data.view_size, else data.image_size); the views grow to it")
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"steps={self.steps} and epochs={self.epochs}: give one of them")
        if self.steps is None and self.epochs is None:
            self.steps = 200
        if self.schedule_by == "budget" and self.budget_minutes is None:
            raise ValueError("schedule_by=budget: give budget_minutes (the time the schedule runs over)")
        return self

    @property
    def variant(self) -> str:
        """What distinguishes runs of one method: the SimCLR loss, the GAN loss, the VAE likelihood."""
        if self.method == "simclr":
            return self.loss.name
        return self.gan.loss if self.method == "gan" else self.vae.likelihood


def _lanes_for(sizes: list[int], lanes: int, batch_size: int) -> int:
    """The lane count nearest ``lanes`` that every world size in ``sizes`` divides (one dividing the batch if any)."""
    step = math.lcm(*sizes)
    even = [k for k in range(step, batch_size + 1, step) if batch_size % k == 0]
    return min(even, key=lambda k: abs(k - lanes)) if even else step * max(1, round(lanes / step))


# method → the sections it reads; the others must stay unset
METHOD_SECTIONS = {"loss": ("simclr",), "optim": ("simclr", "vae"), "vae": ("vae",), "gan": ("gan",)}
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def from_stored(tree: dict[str, Any]) -> RunConfig:
    """The config a run stored (config.yaml, a checkpoint's state), also one written before each method and loss had
    their own sections: keys that the method or loss ignored then are dropped, ``vae.optimizer`` becomes
    ``optim.name``, ``steps`` wins over ``epochs`` as it did, and a missing data.train is the digits it defaulted to."""
    t = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    method = t.get("method", "simclr")
    if isinstance(t.get("vae"), dict) and "optimizer" in t["vae"]:
        optimizer = t["vae"].pop("optimizer")
        if method == "vae":
            t["optim"] = {**(t.get("optim") or {}), "name": optimizer}
    for section, methods in METHOD_SECTIONS.items():
        if method not in methods:
            t.pop(section, None)
    loss = t.get("loss")
    if isinstance(loss, dict) and loss.get("name", "ranking") in LOSSES:
        fields = LOSSES[loss.get("name", "ranking")].model_fields
        t["loss"] = {k: v for k, v in loss.items() if k in fields}
        if t["loss"].get("all_pairs"):
            t["loss"].pop("num_negatives", None)
    if t.get("steps") is not None and t.get("epochs") is not None:
        t.pop("epochs")
    if (t.get("data") or {}).get("train") is None:  # data.train defaulted to the built-in digits
        t["data"] = {**(t.get("data") or {}), "train": "digits"}
    return RunConfig.model_validate(t)
