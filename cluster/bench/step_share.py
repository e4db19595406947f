"""The loss's share of a SimCLR training step against the global batch B, for a given encoder and image size.

    share(B) = L(B) / (L(B) + e·B)

e: the encoder's forward+backward seconds per pair (both views through the encoder and the method's real projection
head), measured at a small batch and scaled linearly with B. L(B): the loss's forward+backward seconds at global
batch B (loss_scaling.measure: fresh process per configuration), measured up to what fits and beyond that projected
by the power law L ≈ e^c·B^s fitted (log-log least squares) to the largest measured batches.
The crossover batch B* solves L(B*) = e·B*: interpolated between measured batches when the shares cross 0.5 there,
e^((log e − c)/(s − 1)) from the fit otherwise (s > 1 only: an O(B) loss keeps a constant share).
With W data-parallel workers both terms divide by W (B/W pairs encoded, 2B/W rows of the loss per rank), so the
share holds to first order; the loss's collectives are not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cluster.bench.loss_scaling import Result, loglog_fit

FIT_POINTS = 3           # the power law is fitted to the largest measured batches
MAX_CROSSOVER = 1 << 40  # beyond this a crossover is reported as none


@dataclass
class EncoderCost:
    name: str
    image_size: int
    seconds_per_pair: float
    pairs: int            # the batch it was measured at


def parse_encoder(spec: str) -> tuple[str, int]:
    """'resnet18@224' → ('resnet18', 224)."""
    name, _, size = spec.partition("@")
    if not name or not size.isdigit() or int(size) < 8:
        raise ValueError(f"encoder {spec!r}: expected NAME@IMAGE_SIZE, e.g. resnet18@224")
    return name, int(size)


def measure_encoder(spec: str, pairs: int, repeats: int = 2, precision: str = "fp32",
                    proj_hidden: int = 512, proj_dim: int = 128) -> EncoderCost:
    """Median forward+backward seconds of ``pairs`` pairs through normalise → encoder → projector (SimCLR's own
    modules, NHWC as the trainer lays them out), divided by ``pairs``; one warm-up pass first."""
    import torch

    from cluster.run_config import load_run_config
    from pretrain.methods import build_method
    from pretrain.precision import autocast_context
    from pretrain.trainer import to_device

    name, size = parse_encoder(spec)
    cfg = load_run_config(None, [f"model.encoder={name}", f"data.image_size={size}", f"precision={precision}",
                                 f"model.small_stem={str(size <= 64).lower()}", f"model.proj_hidden={proj_hidden}",
                                 f"model.proj_dim={proj_dim}", "cluster.workers=1"])
    cpu, fmt = torch.device("cpu"), torch.channels_last
    torch.manual_seed(0)
    net = build_method(cfg).net.to(cpu, memory_format=fmt).train()
    g = torch.Generator().manual_seed(0)
    views = to_device(torch.randint(0, 256, (2 * pairs, 3, size, size), dtype=torch.uint8, generator=g), cpu, fmt)
    grad = torch.randn(2 * pairs, proj_dim, generator=g)
    times = []
    for i in range(1 + max(1, repeats)):
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with autocast_context(precision, cpu):
            z = net.projector(net.encoder(net.normalize(views)))
        z.float().backward(grad)
        if i:
            times.append(time.perf_counter() - t0)
    return EncoderCost(spec, size, sorted(times)[len(times) // 2] / pairs, pairs)


@dataclass
class LossModel:
    """One loss's measured times and the power law fitted to its largest measured batches."""

    loss: str
    measured: dict[int, float]
    slope: float | None
    log_coef: float | None

    @classmethod
    def from_results(cls, loss: str, results: Sequence[Result]) -> LossModel:
        measured = {r.config.batch: r.time_s for r in results if r.config.loss == loss and r.time_s}
        top = sorted(measured)[-FIT_POINTS:]
        fit = loglog_fit([(b, measured[b]) for b in top])
        return cls(loss, measured, *(fit or (None, None)))

    def seconds(self, batch: int) -> tuple[float | None, bool]:
        """(L(B), projected?): the measurement when there is one, else the fitted power law."""
        if batch in self.measured:
            return self.measured[batch], False
        if self.slope is None:
            return None, True
        return math.exp(self.log_coef + self.slope * math.log(batch)), True


def share(loss_seconds: float, enc: EncoderCost, batch: int) -> float:
    return loss_seconds / (loss_seconds + enc.seconds_per_pair * batch)


def crossover(model: LossModel, enc: EncoderCost) -> dict:
    """{"batch": B* or None, "projected": bool, "note": …}: the batch at which the loss costs as much as the network."""
    pts = sorted(model.measured.items())
    ratio = [(b, t / (enc.seconds_per_pair * b)) for b, t in pts]  # loss / network; crossover at 1
    if ratio and ratio[0][1] >= 1:
        return {"batch": None, "projected": False, "note": f"the loss costs more than the network already at B={pts[0][0]}"}
    for (b0, r0), (b1, r1) in zip(ratio, ratio[1:], strict=False):
        if r0 < 1 <= r1:  # log-log interpolation between two measurements
            f = -math.log(r0) / (math.log(r1) - math.log(r0))
            return {"batch": round(math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0)))), "projected": False}
    if model.slope is None or model.slope <= 1.0:
        return {"batch": None, "projected": True, "note": "none: the loss grows no faster than the network (O(B))"}
    log_b = (math.log(enc.seconds_per_pair) - model.log_coef) / (model.slope - 1.0)
    if log_b > math.log(MAX_CROSSOVER):
        return {"batch": None, "projected": True, "note": f"none below B=2^{MAX_CROSSOVER.bit_length() - 1}"}
    b = math.exp(log_b)
    return {"batch": round(b), "projected": b > max(model.measured)}


def table_batches(lo: int = 256, hi: int = 1 << 24) -> list[int]:
    """lo, 4·lo, 16·lo, … ≤ hi."""
    out, b = [], lo
    while b <= hi:
        out.append(b)
        b *= 4
    return out


def _count(b: float) -> str:
    """256, 4k, 1.5M, 12G: a batch size in units of 2^10, 2^20, 2^30, 2^40."""
    for unit in ("", "k", "M", "G"):
        if b < 1024:
            return f"{b:.3g}{unit}" if b < 1000 else f"{b:.0f}{unit}"
        b /= 1024
    return f"{b:.3g}T" if b < 1000 else f"{b:.0f}T"


def report(encoders: Sequence[EncoderCost], models: Sequence[LossModel], batches: Sequence[int]) -> dict:
    """The JSON summary: per encoder and loss, the share at each table batch (and whether projected) and B*."""
    out = {"encoders": {e.name: {"seconds_per_pair": e.seconds_per_pair, "measured_at_pairs": e.pairs}
                        for e in encoders},
           "losses": {m.loss: {"slope": None if m.slope is None else round(m.slope, 3),
                               "measured_batches": sorted(m.measured)} for m in models},
           "shares": {}, "crossover": {}}
    for e in encoders:
        out["shares"][e.name], out["crossover"][e.name] = {}, {}
        for m in models:
            cells = {}
            for b in batches:
                t, projected = m.seconds(b)
                cells[str(b)] = None if t is None else {"share": round(share(t, e, b), 4), "projected": projected}
            out["shares"][e.name][m.loss] = cells
            out["crossover"][e.name][m.loss] = crossover(m, e)
    return out


def table(summary: dict, batches: Sequence[int]) -> str:
    """Rows (encoder, loss), columns B: the loss's share in %, '*' when projected; last column B*."""
    head = f"{'encoder':22s}{'loss':19s}" + "".join(f"{_count(b):>8s}" for b in batches) + f"{'crossover B':>14s}"
    lines = [head]
    for enc, per_loss in summary["shares"].items():
        for loss, cells in per_loss.items():
            row = f"{enc:22s}{loss:19s}"
            for b in batches:
                c = cells[str(b)]
                row += f"{'—':>8s}" if c is None else f"{100 * c['share']:7.1f}" + ("*" if c["projected"] else " ")
            x = summary["crossover"][enc][loss]
            row += f"{(_count(x['batch']) + ('*' if x['projected'] else ' ')) if x['batch'] else 'none ':>14s}"
            lines.append(row)
    return "\n".join(lines)
