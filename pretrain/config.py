"""The validated run configuration: one pydantic model, every section strict (unknown keys fail).

Ray-free: the cluster section is plain data that cluster/ turns into Ray Train's configs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    train: str | None = Field(None, description="required: 'digits' (built in, written to the cache on first use) or "
                              "shards: a directory with manifest.json, a manifest URL, or a brace pattern of .tar URLs")
    probe_train: str | None = Field(None, description="labelled shards for the probe's training split; default: `train`")
    probe_test: str | None = Field(None, description="held-out shards for the probe; default for digits: the built-in holdout")
    image_size: int = Field(32, ge=8, le=1024)
    blur: bool | None = Field(None, description="Gaussian blur in the view recipe; None: on above 32 px")
    mode: Literal["exact", "resampled"] = "exact"
    shuffle_buffer: int = Field(2000, ge=0)
    loader_workers: int = Field(1, ge=0, description="DataLoader worker processes per training worker")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)


class ModelConfig(Strict):
    encoder: str = "bb_convnet_small"
    small_stem: bool = True
    norm: Literal["batch", "group", "none"] = "batch"
    proj_hidden: int = Field(512, ge=1)
    proj_dim: int = Field(128, ge=1)
    proj_layers: int = Field(2, ge=1)
    sync_batchnorm: bool = Field(True, description="SyncBatchNorm on GPU workers (CPU/gloo keeps per-worker BN)")


class LossConfig(Strict):
    name: Literal["ranking", "ranking-blockwise", "binary", "spectral"] = "ranking"
    temperature: float = Field(0.2, gt=0)
    block_size: int = Field(512, ge=1, description="tile side of ranking-blockwise (512: tiles stay in cache)")
    num_negatives: int = Field(1, ge=1, description="binary: negatives per anchor from shifts of the local batch")
    all_pairs: bool = Field(False, description="binary: the O(B^2) all-pairs sigmoid variant")
    mu: float = Field(1.0, gt=0, description="spectral: weight of the quadratic term")


class OptimConfig(Strict):
    name: Literal["lars", "adamw"] = "lars"
    lr: float | None = Field(None, gt=0, description="None: lars 0.3*B/256 (SimCLR rule), adamw 1e-3*B/256")
    weight_decay: float | None = Field(None, ge=0, description="None: lars 1e-6, adamw 0.05; never on norms/biases")
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
    optimizer: Literal["adamw", "lars"] = Field("adamw", description="the VAE's optimiser; lr, weight decay and "
                                                "warmup come from the optim section (optim.name is SimCLR's)")
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
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="0 (CPU, gloo) or 1 (one GPU per worker, NCCL)")
    address: str | None = Field(None, description="existing Ray cluster (ray://… or host:port); None: embedded local Ray")
    storage_path: str | None = Field(None, description="local dir, NFS path or s3://…; None: ~/bigbatch_runs")
    max_failures: int = Field(2, ge=-1)
    num_to_keep: int = Field(2, ge=1)
    threads_per_worker: int | None = Field(None, ge=1, description="torch intra-op threads; None: cpus_per_worker")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpu(cls, v: float) -> float:
        """One DDP rank drives one GPU: a fraction puts two NCCL ranks on one GPU, more than one leaves GPUs idle."""
        if v not in (0, 1):
            raise PydanticCustomError("whole_gpu", "must be 0 (CPU workers) or 1 (one GPU per worker): NCCL needs a "
                                      "whole GPU per rank and a worker drives one GPU; for more GPUs use more workers "
                                      "(cluster.workers=N)")
        return v


class EvalConfig(Strict):
    probe: bool = True
    knn: bool = True
    every_k_checkpoints: int = Field(0, ge=0, description="also probe every k-th checkpoint (0: only the final one)")
    baselines: list[Literal["pixels", "pca", "ppca", "random-init"]] = Field(default_factory=list)
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
    budget_minutes: float | None = Field(None, gt=0, description="wall-clock budget of training: stop at the first "
                                         "log step after it (final checkpoint, then the probe). Counts training "
                                         "time after start-up, summed over resumed attempts. The lr schedule keeps "
                                         "the steps/epochs length: a budget that ends first truncates it")
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = Field(True, description="NHWC weights and images for conv nets: oneDNN (CPU) and tensor "
                                "cores run them faster; numerics unchanged up to summation order")
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    deterministic: bool = Field(False, description="deterministic kernels only (an op without one raises), fixed "
                                "cuBLAS workspace, no cuDNN autotuning; slower")
    tf32: bool = Field(True, description="CUDA: fp32 matmuls/convolutions on TF32 tensor cores (fp32 accumulate); "
                       "false: full fp32")
    data: DataConfig = Field(default_factory=dict, validate_default=True)  # {} → the validator asks for data.train
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
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

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.batch_size % self.cluster.workers:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by cluster.workers={self.cluster.workers}")
        if self.steps is None and self.epochs is None:
            self.steps = 200
        return self
