"""The three-stage training recipe.

1. **Teacher**: the unsplit backbone, cross-entropy, AdamW + one-cycle LR.
2. **Student** (head + slimmable bottleneck + tail, initialised from the teacher's head and tail):
   per step, the *sandwich rule* (widest, narrowest and random widths), each width at a random bit depth with
   straight-through fake quantization (QAT). Losses: head distillation (MSE between the decoder output and the
   teacher's features at the split, as in BottleFit / SC2), cross-entropy and KD from the teacher for the widest
   width, and *in-place distillation* (KL to the widest width's detached predictions) for the narrower widths.
3. **Batch-norm recalibration** per width (switchable BN): running statistics recomputed on training images.

Every stage writes a checkpoint after each epoch and resumes from it; all randomness is seeded.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from slimsplit.bundle import InputSpec
from slimsplit.server.models import (
    Backbone,
    SplitModel,
    SplitModelConfig,
    SplitPoint,
    build_backbone,
    fake_quantize,
)
from slimsplit.server.models.layers import SwitchableBatchNorm2d
from slimsplit.server.training.config import OptimConfig, TrainConfig
from slimsplit.server.training.data import ImageSet

Logger = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Normalizer:
    """uint8 NHWC images -> normalized float NCHW tensors (the manifest's preprocessing constants)."""

    spec: InputSpec

    def __call__(self, images: npt.NDArray[np.uint8] | torch.Tensor, device: torch.device) -> torch.Tensor:
        x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.spec.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, device=device).view(1, -1, 1, 1)
        return (x - mean) / std


def _batches(n: int, batch_size: int, seed: int, shuffle: bool = True) -> Iterator[npt.NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (per image) and one random shift of up to 4 px (per batch)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    return padded[:, :, 4 + dy : 4 + dy + x.shape[2], 4 + dx : 4 + dx + x.shape[3]]


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class _Checkpoint:
    """Resumable per-stage training state in ``<out_dir>/<stage>.ckpt``."""

    def __init__(self, out_dir: Path, stage: str) -> None:
        self.path = out_dir / f"{stage}.ckpt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=False)
        return state

    def save(self, **state: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def _optimizer(
    groups: list[dict[str, Any]], oc: OptimConfig, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    opt = torch.optim.AdamW(groups, lr=oc.lr, weight_decay=oc.weight_decay)
    max_lrs = [float(g.get("lr", oc.lr)) for g in groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=max(1, steps), pct_start=0.15)
    return opt, sched


@torch.no_grad()
def evaluate_backbone(model: nn.Module, data: ImageSet, norm: Normalizer, device: torch.device) -> float:
    model.eval()
    correct = 0
    for idx in _batches(len(data), 512, 0, shuffle=False):
        logits = model(norm(data.images[idx], device))
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(data.labels[idx])).sum())
    return correct / max(1, len(data))


@torch.no_grad()
def evaluate_split(
    model: SplitModel, data: ImageSet, norm: Normalizer, device: torch.device, width: int, bits: int
) -> float:
    model.eval()
    correct = 0
    for idx in _batches(len(data), 512, 0, shuffle=False):
        logits = model(norm(data.images[idx], device), width, bits)
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(data.labels[idx])).sum())
    return correct / max(1, len(data))


StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, labels) -> loss of one batch


def _fit(
    cfg: TrainConfig,
    stage: str,
    model: nn.Module,
    groups: list[dict[str, Any]],
    oc: OptimConfig,
    train: ImageSet,
    norm: Normalizer,
    seed: int,
    step: StepFn,
    evaluate: Callable[[], dict[str, Any]],
    log: Logger,
) -> None:
    """The epoch loop shared by every stage: resume, shuffle, augment, optimise, evaluate, checkpoint, log."""
    device = resolve_device(cfg.device)
    steps_per_epoch = math.ceil(len(train) / oc.batch_size)
    opt, sched = _optimizer(groups, oc, oc.epochs * steps_per_epoch)
    ckpt = _Checkpoint(cfg.out_dir, stage)
    start = 0
    if (state := ckpt.load()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = int(state["epoch"]) + 1
        log({"stage": stage, "event": "resumed", "epoch": start})
    for epoch in range(start, oc.epochs):
        model.train()
        gen = torch.Generator().manual_seed(seed + epoch)
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = _progress(
            _batches(len(train), oc.batch_size, seed + epoch),
            steps_per_epoch,
            f"{stage} {epoch + 1}/{oc.epochs}",
            cfg.show_progress,
        )
        for idx in bar:
            x = _augment(norm(train.images[idx], device), gen)
            y = torch.as_tensor(train.labels[idx], device=device)
            loss = step(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if cfg.show_progress:
                bar.set_postfix(loss=f"{total / seen:.3f}")
        metrics = evaluate()
        ckpt.save(model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), epoch=epoch)
        seconds = time.perf_counter() - t0
        log(
            {
                "stage": stage,
                "epoch": epoch + 1,
                "loss": total / max(1, seen),
                **metrics,
                "seconds": seconds,
                "images_per_s": seen / seconds,
            }
        )
    model.eval()


def train_teacher(cfg: TrainConfig, train: ImageSet, test: ImageSet, norm: Normalizer, log: Logger) -> Backbone:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_backbone(cfg.backbone, len(train.classes)).to(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=0.05)

    _fit(
        cfg,
        "teacher",
        model,
        [{"params": list(model.parameters())}],
        cfg.teacher,
        train,
        norm,
        seed=cfg.seed * 1000,
        step=step,
        evaluate=lambda: {"test_accuracy": evaluate_backbone(model, test, norm, device)},
        log=log,
    )
    return model


def _kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def train_student(
    cfg: TrainConfig, teacher: Backbone, train: ImageSet, test: ImageSet, norm: Normalizer, log: Logger
) -> SplitModel:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed + 1)
    mcfg = SplitModelConfig(
        backbone=cfg.backbone,
        num_classes=len(train.classes),
        split_after=cfg.split_after,
        input_shape=(3, train.images.shape[1], train.images.shape[2]),
        bottleneck=cfg.bottleneck,
    )
    # the student's head and tail start as copies of the teacher's
    student_backbone = build_backbone(cfg.backbone, len(train.classes))
    student_backbone.load_state_dict(teacher.state_dict())
    model = SplitModel(mcfg, student_backbone).to(device)
    teacher = teacher.to(device).eval()
    t_head = teacher.head_module(SplitPoint(cfg.split_after))
    widths = sorted(cfg.bottleneck.widths)
    bits = list(cfg.bottleneck.bits)
    oc = cfg.student
    new_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    new_ids = {id(p) for p in new_params}
    old_params = [p for p in model.parameters() if id(p) not in new_ids]
    rng = np.random.default_rng(cfg.seed + 7)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_feat = t_head(x)
            t_logits = teacher(x)
        z_full = model.encoder(model.head(x))
        middle = list(widths[1:-1])
        rng.shuffle(middle)
        # sandwich rule: the widest, the narrowest and random widths in between
        step_widths = [widths[-1], widths[0], *middle[: max(0, cfg.widths_per_step - 2)]]
        loss = torch.zeros((), device=device)
        widest_logits: torch.Tensor | None = None
        for w in step_widths:
            b = int(rng.choice(bits))
            z = fake_quantize(z_full[:, :w], b)
            feat = model.decoder(z, w)
            logits = model.tail(feat)
            loss = loss + cfg.feature_weight * F.mse_loss(feat, t_feat)
            if widest_logits is None:  # the widest width: labels + teacher
                loss = loss + F.cross_entropy(logits, y) + _kd(logits, t_logits, cfg.kd_temperature)
                widest_logits = logits.detach()
            else:  # in-place distillation from the widest width
                loss = loss + _kd(logits, widest_logits, cfg.kd_temperature)
        return loss

    quick = test.subset(min(len(test), 2000))

    def evaluate() -> dict[str, Any]:
        accs = {
            f"w{w}b{b}": evaluate_split(model, quick, norm, device, w, b)
            for w in (widths[0], widths[-1])
            for b in (bits[0], bits[-1])
        }
        return {"test_accuracy_2k": accs}

    groups = [{"params": new_params, "lr": oc.lr}, {"params": old_params, "lr": oc.lr * 0.3}]
    _fit(
        cfg,
        "student",
        model,
        groups,
        oc,
        train,
        norm,
        seed=cfg.seed * 1000 + 500,
        step=step,
        evaluate=evaluate,
        log=log,
    )
    return model


@torch.no_grad()
def recalibrate_batch_norm(cfg: TrainConfig, model: SplitModel, train: ImageSet, norm: Normalizer, log: Logger) -> None:
    """Recompute the switchable BN statistics of every width on ``cfg.recalibration_images`` training images."""
    device = resolve_device(cfg.device)
    model.eval()
    switchable = [m for m in model.decoder.modules() if isinstance(m, SwitchableBatchNorm2d)]
    n = min(cfg.recalibration_images, len(train))
    rng = np.random.default_rng(cfg.seed + 11)
    for wi, w in enumerate(model.decoder.widths):
        bns = [cast(nn.BatchNorm2d, sbn.bns[wi]) for sbn in switchable]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the recalibration batches
            bn.train()
        for idx in _batches(n, 256, cfg.seed + 13):
            z = model.encode(norm(train.images[idx], device), w)
            model.decoder(fake_quantize(z, int(rng.choice(list(cfg.bottleneck.bits)))), w)
        for bn in bns:
            bn.eval()
            bn.momentum = 0.1
    log({"stage": "recalibrate", "images": n, "widths": list(model.decoder.widths)})


def json_logger(path: Path, echo: Callable[[str], None] | None = print) -> Logger:
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(record: dict[str, Any]) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if echo is not None:
            echo(json.dumps(record))

    return log
