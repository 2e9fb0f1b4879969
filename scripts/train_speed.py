"""Training speed of kd2deploy's distillation loop vs a bare PyTorch loop on the same models and data.

Both loops train the digits student (cnn-tiny by default) with the Hinton loss against teacher logits computed
once (the plain transfer set has no per-epoch randomness), AdamW and the one-cycle schedule, batch 64. They
run in interleaved rounds (bare, kd2deploy, bare, kd2deploy, ...) so that other load on the machine hits both
alike; the table gives samples/s per round's median and the ratio. The bare loop does what the library loop
must do and nothing else (no per-epoch validation, no last-good-weights copy, no progress callback); the
library loop does all of that, so the ratio is the whole overhead. The batched trainer (every arm of a
comparison stacked into one model) is timed too, as samples/s per student.

    .venv/bin/python scripts/train_speed.py                 # 5 rounds of 10 epochs
    .venv/bin/python scripts/train_speed.py --rounds 3 --epochs 5 --student mlp-tiny
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare_loop(model, x, y, teacher_logits, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """The loop one would write by hand; returns seconds."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t = 2.0
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            logits = model(x[idx])
            soft = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits[idx] / t, -1),
                            reduction="batchmean", log_target=True)
            loss = 0.5 * t * t * soft + 0.5 * F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    import torch

    from kd2deploy.config import PipelineConfig, TrainConfig
    from kd2deploy.data import load_data
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.batched import train_arms_batched
    from kd2deploy.distill.losses import hinton_loss
    from kd2deploy.distill.teacher import teacher_logits_of
    from kd2deploy.distill.train import fit, to_tensors
    from kd2deploy.models import build_model
    from kd2deploy.models.nets import Standardized

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="cnn-tiny")
    p.add_argument("--teacher", default="cnn-large")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arms", type=int, default=15, help="students stacked in the batched run")
    args = p.parse_args(argv)

    d = load_data(PipelineConfig().data, 0)
    x, y, x_va, y_va = to_tensors(d.x_train, d.y_train, d.x_val, d.y_val)
    mean, std = float(x.mean()), float(x.std())

    def build(arch):
        return Standardized(build_model(arch, d.input_shape, d.num_classes, {}, "model"), mean, std)

    torch.manual_seed(0)
    teacher_logits = teacher_logits_of(build(args.teacher), x)  # an untrained teacher: speed is all we measure
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-2)
    samples = args.epochs * len(y)
    rates: dict[str, list[float]] = {"bare PyTorch loop": [], "kd2deploy fit": [], "kd2deploy batched, per student": []}
    for r in range(args.rounds):
        torch.manual_seed(r)
        rates["bare PyTorch loop"].append(samples / bare_loop(build(args.student), x, y, teacher_logits,
                                                              args.epochs, args.batch_size, cfg.lr, r))
        torch.manual_seed(r)
        model = build(args.student)
        t0 = time.perf_counter()
        fit(model, x, y, x_va, y_va, cfg, r, teacher_logits=teacher_logits,
            loss_fn=lambda s, t, yb: hinton_loss(s, t, yb, temperature=2.0, alpha=0.5))
        rates["kd2deploy fit"].append(samples / (time.perf_counter() - t0))
        if args.arms > 1:
            arms = [Arm("kd", s, loss="hinton", temperature=2.0, alpha=0.5) for s in range(args.arms)]
            t0 = time.perf_counter()
            train_arms_batched(lambda: build(args.student), arms, (x, y, x_va, y_va), teacher_logits, cfg)
            rates["kd2deploy batched, per student"].append(args.arms * samples / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items() if v),
              flush=True)
    bare = statistics.median(rates["bare PyTorch loop"])
    print(f"\n{args.student} student, batch {args.batch_size}, {args.epochs} epochs x {len(y)} samples per round, "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'loop':<32} {'median samples/s':>17} {'min':>9} {'max':>9} {'vs bare':>8}")
    for name, v in rates.items():
        if v:
            med = statistics.median(v)
            print(f"{name:<32} {med:>17,.0f} {min(v):>9,.0f} {max(v):>9,.0f} {med / bare:>7.2f}x")


if __name__ == "__main__":
    main()
