"""`bigbatch doctor`'s checks: what a node has, and short runs of the code paths only its hardware exercises.

``local_report()`` runs on the node itself (this process, or a Ray task on a cluster's GPU node) and returns the
environment and one ``Check`` per item; ``run_doctor()`` adds Ray's view and picks where the checks run. Each check
uses the real backend of the node: NCCL and GPUs when there are some, gloo and the CPU otherwise.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

CHECKS = ("ray", "ddp", "syncbn", "precision", "checkpoint", "stream")
PRESET = "cifar10-simclr"                      # the GPU preset: its encoder is the one stepped in mixed precision
SYNCBN_ENCODERS = ("mobilenetv3_small_100",)  # + the preset's: timm encoders with fused BatchNormAct2d layers
# One A100 at 25 % of its dense bf16 peak (78 TFLOP/s) over ResNet-18's ≈ 6.6 GFLOPs per positive pair at 32 px
# (forward + backward, two views): the input rate a GPU needs when none is here to measure.
REFERENCE_GPU_PAIRS_PER_S = 11_800


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """Versions of the stack, the GPUs this process sees (native bf16: compute capability ≥ 8.0, as
    ``torch.cuda.is_bf16_supported(including_emulation=False)``) and its CPU cores."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}", "bf16": p.major >= 8})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    nccl = None
    if torch.version.cuda and torch.distributed.is_nccl_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "nccl": nccl, "gpus": gpus, "cpu_cores": cores,
            "cores_per_gpu": round(cores / len(gpus), 1) if gpus else None}


def _device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _preset(*overrides: str):
    from cluster.run_config import load_run_config
    return load_run_config(PRESET, ["data.train=digits", "cluster.workers=1", *overrides])


def check_ddp(gpus: int) -> list[Check]:
    """Each loss's DDP contract, 2 processes against one (cluster/doctor_ddp.py): NCCL with ≥ 2 GPUs, else gloo."""
    from cluster.doctor_ddp import CASES, ddp_contract

    backend = "nccl" if gpus >= 2 else "gloo"
    try:
        report = ddp_contract(2, backend)
    except Exception as exc:  # noqa: BLE001 — a backend that cannot start is this check's finding
        return [Check(f"ddp {name}", False, f"2 processes ({backend}) did not run: {exc}") for name in CASES]
    return [Check(f"ddp {name}", r["ok"], f"2 processes ({backend}) vs 1: loss Δ {r['loss_diff']:.1e}, gradients Δ "
                  f"{r['grad_diff']:.1e} (relative){'' if r['ok'] else ' — beyond tolerance'}",
                  {"backend": backend, **r}) for name, r in report.items()]


def check_syncbn(device: torch.device) -> Check:
    """The SyncBatchNorm conversion of a multi-GPU run leaves each encoder's eval function unchanged."""
    from pretrain.encoders import create_encoder
    from pretrain.trainer import sync_batchnorm

    cfg = _preset()
    names = (cfg.model.encoder, *SYNCBN_ENCODERS)
    worst = 0.0
    for name in names:
        torch.manual_seed(0)
        model = create_encoder(name, small_stem=cfg.model.small_stem and name == cfg.model.encoder).to(device).eval()
        x = torch.randn(4, 3, 32, 32, device=device)
        with torch.no_grad():
            plain = model(x)
            converted = sync_batchnorm(model, torch.device("cuda"), world_size=2).eval()  # as a multi-GPU run does
            if not any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()):
                return Check("syncbn", False, f"{name}: no SyncBatchNorm after the conversion")
            synced = converted(x)
        worst = max(worst, float((synced - plain).abs().max() / plain.abs().max().clamp_min(1e-12)))
    ok = worst <= 1e-5
    return Check("syncbn", ok, f"{', '.join(names)} on {device}: converted vs unconverted eval output, relative Δ "
                 f"{worst:.1e}{'' if ok else ' — SyncBatchNorm changed the function'}", {"relative_diff": worst})


def check_precision(device: torch.device) -> Check:
    """A few train steps of the preset's method in its mixed precision on one device: finite losses, fp32 weights that
    moved. bf16 where native (CPU, GPUs of compute capability ≥ 8.0), else fp16 with loss scaling. On a GPU the
    steps are timed: the input rate that GPU needs."""
    from pretrain.methods import build_method
    from pretrain.precision import configure_backends

    on_gpu = device.type == "cuda"
    precision = "bf16" if not on_gpu or torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    batch = 256 if on_gpu else 16
    cfg = _preset(f"precision={precision}", f"batch_size={batch}")
    configure_backends(device, precision=precision, tf32=cfg.tf32, deterministic=False)
    torch.manual_seed(0)
    method = build_method(cfg).to(device, memory_format=torch.channels_last)
    method.configure(100, device, lambda m: m)
    method.train()
    before = [p.detach().clone() for p in method.parameters()]
    g = torch.Generator().manual_seed(0)
    views = torch.randint(0, 256, (2 * batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(device) \
        .contiguous(memory_format=torch.channels_last)
    losses, timed, seconds = [], 5 if on_gpu else 0, 0.0
    for step in range(2 + timed):
        if step == 2 and on_gpu:
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        losses.append(method.train_step({"views": views}, step)["loss"])
    if on_gpu:
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    values = [float(v) for v in losses]
    moved = any(not torch.equal(a, p) for a, p in zip(before, method.parameters(), strict=True))
    fp32 = all(p.dtype == torch.float32 for p in method.parameters())
    ok = all(math.isfinite(v) for v in values) and moved and fp32
    data: dict[str, Any] = {"precision": precision, "batch": batch, "losses": values}
    detail = (f"{cfg.model.encoder} ({PRESET}), {precision} autocast, batch {batch} at 32 px on {device}: "
              f"losses {values[0]:.3f} … {values[-1]:.3f}")
    if seconds:
        data["pairs_per_s"] = round(batch * timed / seconds, 1)
        detail += f", {data['pairs_per_s']:,.0f} pairs/s"
    if not ok:
        detail += "; " + ("a loss is not finite" if not all(map(math.isfinite, values)) else
                          "the weights did not move" if not moved else "weights are not fp32")
    return Check("precision", ok, detail, data)


def check_checkpoint(device: torch.device) -> Check:
    """Save after two steps, restore into a differently initialised method, and take the next step in both: the same
    loss and weights, bit for bit (deterministic kernels). A VAE draws noise on the device every step, so the
    device's generator must come back too."""
    from cluster.run_config import load_run_config
    from pretrain.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
    from pretrain.methods import build_method
    from pretrain.precision import configure_backends

    cfg = load_run_config("vae-digits", ["model.encoder=bb_convnet_tiny", "vae.decoder_width=16", "batch_size=32",
                                         "cluster.workers=1"])
    size = cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8, generator=g).to(device) for _ in range(3)]

    def fresh(seed: int):
        torch.manual_seed(seed)
        m = build_method(cfg).to(device)
        m.configure(10, device, lambda x: x)
        return m.train()

    configure_backends(device, precision=cfg.precision, tf32=cfg.tf32, deterministic=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bigbatch-doctor-") as tmp:
            a = fresh(0)
            for step in range(2):
                a.train_step({"views": batches[step]}, step)
            save_checkpoint(Path(tmp), rank=0, method_state=a.state(), step=2, stream={"epoch": 0, "batch": 2},
                            config=cfg.model_dump(mode="json"), device=device)
            loss_a = float(a.train_step({"views": batches[2]}, 2)["loss"])
            b = fresh(1)
            state, rng = load_checkpoint(Path(tmp))
            b.load_state(state["method"])
            set_rng_state(rng, device)
            loss_b = float(b.train_step({"views": batches[2]}, 2)["loss"])
        diff = max(float((pa - pb).abs().max()) for pa, pb in zip(a.state_dict().values(), b.state_dict().values(),
                                                                   strict=True))
    finally:
        configure_backends(device, precision=cfg.precision, tf32=cfg.tf32, deterministic=False)
    ok = loss_a == loss_b and diff == 0.0
    return Check("checkpoint", ok, f"VAE on {device}: save → restore → next step: loss {loss_a:.6f} vs {loss_b:.6f}, "
                 f"max |Δ weight| {diff:.1e}{'' if ok else ' — the resumed step differs'}",
                 {"loss": loss_a, "restored_loss": loss_b, "max_weight_diff": diff})


def stream_pairs_per_core(seconds: float = 2.0, image_size: int = 32) -> float:
    """Positive pairs per CPU-second of one thread of the training stream (the built-in digits at ``image_size``)."""
    from data_pipeline.stream import StreamSpec, make_loader

    spec = StreamSpec(source="digits", batch_size=256, image_size=image_size, num_workers=0,
                      shuffle_buffer=1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        next(iter(make_loader(spec)))  # warm-up: manifest, first shard
        pairs, t0, epoch = 0, time.process_time(), 0
        while time.process_time() - t0 < seconds:
            for batch in make_loader(spec, epoch=epoch):
                pairs += len(batch["key"])
                if time.process_time() - t0 >= seconds:
                    break
            epoch += 1
        return pairs / (time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)


def check_stream(env: dict[str, Any], gpu_pairs_per_s: float | None) -> Check:
    """Loader cores one GPU needs = (pairs/s the GPU trains) / (pairs/s per loader core); the node must have them
    per GPU, beside one core for the training process."""
    rate = stream_pairs_per_core()
    data: dict[str, Any] = {"stream_pairs_per_s_per_core": round(rate, 1)}
    head = f"stream {rate:,.0f} pairs/s per loader core (digits, 32 px)"
    if not env["gpus"]:
        need = REFERENCE_GPU_PAIRS_PER_S / rate
        data["reference_loader_cores_per_gpu"] = round(need, 2)
        return Check("stream", True, f"{head}; no GPU here: a GPU training {PRESET} at ≈ {REFERENCE_GPU_PAIRS_PER_S:,} "
                     f"pairs/s (an A100 at 25 % of its bf16 peak) needs {need:.1f} loader cores", data)
    if not gpu_pairs_per_s:
        return Check("stream", False, f"{head}; the GPU rate is unknown (the precision check did not run or failed)",
                     data)
    need = gpu_pairs_per_s / rate
    spare = env["cores_per_gpu"] - 1
    data.update(gpu_pairs_per_s=gpu_pairs_per_s, loader_cores_per_gpu=round(need, 2), spare_cores_per_gpu=spare)
    ok = spare >= need
    return Check("stream", ok, f"{head}; one GPU trains {PRESET} at {gpu_pairs_per_s:,.0f} pairs/s → {need:.1f} loader "
                 f"cores per GPU; this node has {spare:g} per GPU beside the training process"
                 + (f" → data.loader_workers={math.ceil(need)}" if ok else " — the input cannot keep up: fewer "
                    "GPUs per node, smaller images or more cores"), data)


def local_report(checks: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
    """The environment of this process's node and the requested checks (all by default), run here."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS call (the checkpoint check)
    wanted = set(checks or CHECKS)
    env = environment()
    device = _device()
    out: list[Check] = []
    if "ddp" in wanted:
        out += check_ddp(len(env["gpus"]))
    for name, fn in (("syncbn", check_syncbn), ("precision", check_precision), ("checkpoint", check_checkpoint)):
        if name in wanted:
            out.append(_guarded(name, fn, device))
    if "stream" in wanted:
        gpu_rate = next((c.data.get("pairs_per_s") for c in out if c.name == "precision"), None)
        out.append(_guarded("stream", check_stream, env, gpu_rate))
    return {"environment": env, "checks": [asdict(c) for c in out]}


def _guarded(name: str, fn, *args) -> Check:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 — an error is this check's finding, reported on its line
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def ray_view(address: str | None) -> dict[str, Any]:
    """Ray's resources and alive nodes (CPUs, GPUs); Ray must be connected."""
    import ray

    nodes = [{"node": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0.0),
              "gpus": n["Resources"].get("GPU", 0.0)} for n in ray.nodes() if n["Alive"]]
    total = ray.cluster_resources()
    return {"address": address or "embedded", "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0),
            "nodes": nodes}


def run_doctor(address: str | None = None, checks: list[str] | None = None) -> dict[str, Any]:
    """Without an address: Ray's view from an embedded local Ray, then the checks in this process. With one: the
    cluster's view, and the checks in a Ray task on its node with the most GPUs (up to 2, for NCCL)."""
    import ray

    from cluster.ray_connect import connect_ray

    wanted = list(checks or CHECKS)
    view = None
    if address is not None or "ray" in wanted:
        own = not ray.is_initialized()
        connect_ray(address)
        try:
            view = ray_view(address)
            if address is not None:
                gpus = int(min(2, max((n["gpus"] for n in view["nodes"]), default=0)))
                task = ray.remote(num_cpus=1, num_gpus=gpus)(local_report)
                report = ray.get(task.remote(wanted), timeout=1800)
        finally:
            if own:
                ray.shutdown()
    if address is None:
        report = local_report(wanted)
    ray_checks = []
    if view is not None and "ray" in wanted:
        torch_gpus = len(report["environment"]["gpus"])
        ok = address is not None or view["gpus"] == torch_gpus
        where = f"Ray ({view['address']}): {len(view['nodes'])} node(s), {view['cpus']:g} CPUs, {view['gpus']:g} GPUs"
        detail = (f"{where}; the checks ran on a node whose torch sees {torch_gpus} GPU(s)" if address is not None
                  else f"{where}; torch sees {torch_gpus} GPU(s)" + ("" if ok else " — Ray and torch disagree "
                                                                     "(CUDA_VISIBLE_DEVICES?)"))
        ray_checks.append(asdict(Check("ray", ok, detail, {"torch_gpus": torch_gpus})))
    all_checks = ray_checks + report["checks"]
    return {"doctor": True, "ok": all(c["ok"] for c in all_checks), "environment": report["environment"],
            "ray": view, "checks": all_checks}
