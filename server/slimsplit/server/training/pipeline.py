"""The whole recipe end to end: data -> teacher -> student -> BN recalibration -> bundle (+ shipped samples)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from slimsplit.bundle import InputSpec
from slimsplit.server.training.config import TrainConfig
from slimsplit.server.training.data import (
    FASHION_MNIST_DIR,
    TRAIN_SEED,
    ImageSet,
    RenderedFashion,
    fashion_test_set,
    load_image_folder_splits,
)
from slimsplit.server.training.train import (
    Normalizer,
    evaluate_backbone,
    json_logger,
    recalibrate_batch_norm,
    resolve_device,
    train_student,
    train_teacher,
)

INPUT_SPEC = InputSpec()


def load_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    if cfg.data == "fashion-mnist":
        root = cfg.data_dir or FASHION_MNIST_DIR
        train = RenderedFashion.load("train", root).render(TRAIN_SEED, cfg.train_limit)
        test = fashion_test_set(root, cfg.test_limit)
    else:
        train, test = load_image_folder_splits(Path(cfg.data))
        if cfg.train_limit:
            train = train.subset(cfg.train_limit)
        if cfg.test_limit:
            test = test.subset(cfg.test_limit)
    return train, test


def write_samples(path: Path, test: ImageSet, per_class: int = 16) -> None:
    """A class-balanced sample of rendered test images for the demo and the tests (uint8 .npz)."""
    picks: list[int] = []
    for c in range(len(test.classes)):
        picks.extend(np.flatnonzero(test.labels == c)[:per_class].tolist())
    picks.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=test.images[picks],
        labels=test.labels[picks],
        classes=np.asarray(test.classes),
        indices=np.asarray(picks, np.int64),
    )


def _epoch_seconds(log_path: Path) -> float:
    """Training time summed over every epoch in the log (a resumed run counts the epochs of earlier runs)."""
    latest: dict[tuple[str, int], float] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "epoch" in rec and "seconds" in rec:
            latest[(str(rec["stage"]), int(rec["epoch"]))] = float(rec["seconds"])
    return sum(latest.values())


def run(cfg: TrainConfig, samples_out: Path | None = None) -> Path:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t_start = time.perf_counter()
    log = json_logger(cfg.out_dir / "train_log.jsonl")
    device = resolve_device(cfg.device)
    log({"stage": "setup", "device": str(device), "threads": torch.get_num_threads(), "config": repr(cfg)})
    train, test = load_data(cfg)
    log({"stage": "data", "train": len(train), "test": len(test), "classes": list(train.classes)})
    norm = Normalizer(INPUT_SPEC)
    teacher = train_teacher(cfg, train, test, norm, log)
    teacher_acc = evaluate_backbone(teacher, test, norm, device)
    log({"stage": "teacher", "event": "done", "test_accuracy": teacher_acc})
    student = train_student(cfg, teacher, train, test, norm, log)
    recalibrate_batch_norm(cfg, student, train, norm, log)
    student.save(cfg.out_dir / "student_final.pt")
    train_seconds = _epoch_seconds(cfg.out_dir / "train_log.jsonl")

    from slimsplit.server.export import write_bundle  # needs the codec; imported when it is needed
    from slimsplit.server.export.codec_tables import DEFAULT_FIT_IMAGES

    bundle_dir = cfg.bundle_dir or (cfg.out_dir / "bundle")
    manifest = write_bundle(
        student.cpu(),
        bundle_dir,
        name=cfg.bundle_name,
        version=cfg.bundle_version,
        classes=train.classes,
        input_spec=INPUT_SPEC,
        test_images=test.images,
        test_labels=test.labels,
        fit_images=train.images[:DEFAULT_FIT_IMAGES],
        notes={
            "unsplit_teacher_accuracy": round(teacher_acc, 6),
            "data": cfg.data,
            "train_images": len(train),
            "train_seconds": round(train_seconds, 1),
            "recipe": "teacher -> student (sandwich rule, in-place distillation, head distillation, QAT) "
            "-> per-width BN recalibration",
            "command": "slimsplit-train (see README)",
        },
        baseline=teacher,
        progress=lambda m: log({"stage": "export", "event": m}),
    )
    if samples_out is not None:
        write_samples(samples_out, test)
    log(
        {
            "stage": "done",
            "bundle": str(bundle_dir),
            "seconds": time.perf_counter() - t_start,
            "modes": {m.name: m.accuracy for m in manifest.modes},
        }
    )
    return bundle_dir
