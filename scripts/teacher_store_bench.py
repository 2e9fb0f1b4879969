"""Student training time with and without the teacher-output store, on pipelines/edge.yaml's models.

What is timed: kd2deploy's own training loops (``train.fit`` for one KD student, ``batched.train_arms_batched``
for the stacked many-student case: edge.yaml's 5 seeds x {kd, scratch, label_smoothing} = 15 students) with
the edge pipeline's data (digits train split), teacher (cnn-large, ~227k params), student (cnn-tiny), loss
(Hinton, T=2, alpha=0.5) and training settings (batch 64, lr 1e-2, AdamW, one-cycle), for ``--epochs`` epochs.

* **teacher online**: the teacher runs on every batch (what distillation costs when the teacher is called per
  step, once per epoch per student; in the stacked case once per distinct seed's batch).
* **from the store**: the teacher's logits come from ``<tmp>/.cache/teacher_outputs/<key>/`` (memory-mapped
  .npy, read a batch at a time). Writing the entry (one teacher pass over the train split) is timed separately.

The teacher's weights are its random initialisation: the time of a forward pass does not depend on them. Modes
run in interleaved rounds (online, store, online, store, ...) alternating which goes first, after one untimed
warm-up run, so that other load on the machine hits both alike;
the table gives each mode's median and min over rounds, wall clock (time.perf_counter), torch threads as stated.

    .venv/bin/python scripts/teacher_store_bench.py               # 3 rounds of 10 epochs
    .venv/bin/python scripts/teacher_store_bench.py --rounds 2 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Online:
    """Teacher logits computed on demand for the requested rows (any index shape): the teacher runs per batch."""

    def __init__(self, teacher, x):
        self.teacher, self.x = teacher, x

    def __getitem__(self, idx):
        import torch

        from kd2deploy.distill.teacher import teacher_logits_of

        if idx.dim() == 1:
            return teacher_logits_of(self.teacher, self.x[idx])
        rows, inverse = torch.unique(idx, dim=0, return_inverse=True)  # stacked: once per distinct batch
        out = teacher_logits_of(self.teacher, self.x[rows.reshape(-1)]).view(*rows.shape, -1)
        return out[inverse]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from kd2deploy.config import load_config
    from kd2deploy.data import load_data
    from kd2deploy.distill.arms import Arm
    from kd2deploy.distill.batched import train_arms_batched
    from kd2deploy.distill.losses import hinton_loss
    from kd2deploy.distill.store import teacher_outputs
    from kd2deploy.distill.train import fit, to_tensors
    from kd2deploy.models import build_model
    from kd2deploy.models.nets import Standardized

    if args.threads:
        torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "pipelines" / "edge.yaml", [f"distill.train.epochs={args.epochs}"])
    d = load_data(cfg.data, cfg.seed)
    x, y, xv, yv = to_tensors(d.x_train, d.y_train, d.x_val, d.y_val)
    mean, std = float(d.x_train.mean()), float(d.x_train.std())

    def build(role):
        spec = getattr(cfg, role)
        return Standardized(build_model(spec.arch, d.input_shape, d.num_classes, spec.kwargs, role), mean, std)

    torch.manual_seed(0)
    teacher = build("teacher").eval()
    dc = cfg.distill
    loss = partial(hinton_loss, temperature=dc.temperature, alpha=dc.alpha)
    arms = []
    for seed in dc.seeds:
        arms += [Arm("kd", seed, loss=dc.loss, temperature=dc.temperature, alpha=dc.alpha), Arm("scratch", seed),
                 Arm("label_smoothing", seed, label_smoothing=dc.control_label_smoothing)]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stored, rec = teacher_outputs(teacher, x, Path(tmp) / "teacher_outputs", cfg.resolved()["data"])
        write_s = time.perf_counter() - t0
        online = Online(teacher, x)
        sources = {"teacher online": online, "from the store": stored}

        def one(src):
            torch.manual_seed(0)
            student = build("student")
            t = time.perf_counter()
            fit(student, x, y, xv, yv, dc.train, 0, loss_fn=loss, teacher_logits=src)
            return time.perf_counter() - t

        def stacked(src):
            t = time.perf_counter()
            train_arms_batched(lambda: build("student"), arms, (x, y, xv, yv), src, dc.train)
            return time.perf_counter() - t

        times = {(case, mode): [] for case in ("1 student", f"{len(arms)} stacked") for mode in sources}
        one(stored)  # warm-up (first-call costs: kernels, allocator), not timed
        for r in range(args.rounds):
            order = list(sources.items())[:: 1 if r % 2 == 0 else -1]  # alternate which mode goes first
            for mode, src in order:
                times[("1 student", mode)].append(one(src))
            for mode, src in order:
                times[(f"{len(arms)} stacked", mode)].append(stacked(src))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"teacher-output store bench: pipelines/edge.yaml models (teacher {cfg.teacher.arch}, student "
          f"{cfg.student.arch}), {len(y)} training samples, batch {dc.train.batch_size}, {args.epochs} epochs, "
          f"{args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}, load average "
          f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"store entry written once: {write_s:.2f} s (one teacher pass over the train split + atomic write)")
    print(f"{'case':<14} {'mode':<16} {'median s':>9} {'min s':>7}")
    for (case, mode), ts in times.items():
        print(f"{case:<14} {mode:<16} {statistics.median(ts):>9.2f} {min(ts):>7.2f}")
    for case in ("1 student", f"{len(arms)} stacked"):
        a = statistics.median(times[(case, "teacher online")])
        b = statistics.median(times[(case, "from the store")])
        print(f"{case}: the store makes training {a / b:.2f}x faster (median online / median store)")


if __name__ == "__main__":
    main()
