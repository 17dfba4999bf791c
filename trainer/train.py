"""The training loop: plain PyTorch, synthetic batches on the fly, Dice + CE, AdamW, warm-up + cosine decay.

Each step's batch is a function of (seed, rank, step), so background workers render exactly what a resumed
run would. The run folder and its files (``last.pt`` for an exact resume, ``best.pt``, the CSV logs, the
curves, ``STOP``, ``result.json`` at the end) are ``runfolder.py``'s (names from
``KneeSegmentationLib/learn/contract.py``); torchrun, the learning-rate schedule and the time budget are
``schedule.py``'s.
"""
from __future__ import annotations

import itertools
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from KneeSegmentationLib.constants import BONES, NUM_CLASSES
from KneeSegmentationLib.metrics import dice
from KneeSegmentationLib.models.store import load_model
from KneeSegmentationLib.models.network import UNet3D, build_network, widened, with_classes
from KneeSegmentationLib.segment.precision import cpu_has_fast_bf16
from KneeSegmentationLib.learn.contract import CONFIG_FILE, TRAIN_LOG, VAL_LOG, clear_result, write_result

from . import ranges
from .config import TrainConfig
from .dataset import load_dataset
from .generator import Generator, Sample, upsampled
from .losses import as_fractions, dice_ce_loss
from .runfolder import (BEST, LAST, STOP_FILE, TRAIN_COLUMNS, VAL_COLUMNS, append_csv, atomic_save,
                        load_checkpoint, plot_curves, rewrite_csv, rng_state, set_rng_state)
from .schedule import CALIBRATION_STEPS, Dist, fit_budget, lr_factor, setup_distributed

# ----------------------------------------------------------------------------------------- validation
def validation_samples(cfg: TrainConfig, maps, generator: Generator) -> list[Sample]:
    """Fixed validation cases (seeded contrasts, full inference window centred near the joint): the held-out
    maps, a third of the cases on held-out maps with a fibula (or, lacking one, a training map with a fibula:
    seen anatomy, unseen contrasts)."""
    rng, gen = np.random.default_rng(cfg.val_seed), torch.Generator().manual_seed(cfg.val_seed)
    val = [i for i, m in enumerate(maps) if m.role == "val"]
    fib = [i for i in val if maps[i].has_fibula] or [i for i, m in enumerate(maps) if m.has_fibula]
    plan = []
    n_fib = cfg.val_cases // 3 if fib else 0
    for k in range(cfg.val_cases - n_fib):
        plan.append(val[k % len(val)] if val else k % len(maps))
    for k in range(n_fib):
        plan.append(fib[k % len(fib)])
    samples = []
    for i in plan:
        center = maps[i].joint_center + rng.uniform(-10, 10, 3)
        samples.append(generator.sample(rng, gen, map_index=i, center=center, size=cfg.patch))
    return samples


@torch.inference_mode()
def validate(net: torch.nn.Module, samples: list[Sample], device: torch.device) -> dict:
    """Per-bone Dice averaged over the cases where the bone is in the truth (or predicted)."""
    net.eval()
    per_bone: dict[str, list[float]] = {b.name: [] for b in BONES}
    per_case = []
    for s in samples:
        x = torch.from_numpy(s.image)[None, None].to(device)
        pred = net(x).argmax(1)[0].cpu().numpy()
        case = {"map": s.map_id}
        for b in BONES:
            t, p = s.target == b.label, pred == b.label
            if t.any():
                d = dice(p, t)
                per_bone[b.name].append(d)
                case[b.name] = d
        per_case.append(case)
    net.train()
    out = {f"dice_{name.lower()}": float(np.mean(v)) if v else float("nan") for name, v in per_bone.items()}
    scores = [v for v in out.values() if not math.isnan(v)]
    out["score"] = float(np.mean(scores)) if scores else 0.0
    out["cases"] = per_case
    return out


# ------------------------------------------------------------------------------------------ training
class BatchSource:
    """Synthetic samples, optionally mixed with crops of corrected cases (fine-tuning)."""

    def __init__(self, cfg: TrainConfig, generator: Generator, cases=None) -> None:
        self.cfg, self.generator, self.cases = cfg, generator, cases

    def batch(self, rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 1, Z, Y, X), targets in the generator's form, see ``target``)."""
        xs, ys = [], []
        for _ in range(self.cfg.batch):
            if self.cases is not None and rng.random() < self.cfg.case_fraction:
                s = self.cases.sample(rng)
            else:
                s = self.generator.sample(rng, gen)
            xs.append(torch.from_numpy(s.image))
            ys.append(self.target(s))
        return torch.stack(xs)[:, None], torch.stack(ys)

    def target(self, s: Sample) -> torch.Tensor:
        """Class indices (Z, Y, X); class fractions (C, Z, Y, X) with ``SOFT_TARGETS``; class indices at the
        supersampled points with ``FINE_TARGETS``. A corrected case knows only its voxels' classes: one-hot
        fractions, or each class repeated at its voxel's points."""
        target = torch.from_numpy(s.target)
        if self.generator.soft_targets:
            return torch.from_numpy(s.soft) if s.soft is not None else as_fractions(target[None], NUM_CLASSES)[0]
        if self.generator.fine_targets:
            return torch.from_numpy(s.fine).long() if s.fine is not None else upsampled(target, self.generator.supersample)
        return target


def step_seeds(seed: int, rank: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The random state of one training step: a function of (seed, rank, step) only, so the batch of a step is
    the same whether it was rendered in a worker process, in the main process or after a resume."""
    rng = np.random.default_rng([seed, rank, step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


class StepBatches(torch.utils.data.Dataset):
    """Batch ``i`` is the batch of training step ``i`` (see ``step_seeds``)."""

    def __init__(self, source: BatchSource, seed: int, rank: int) -> None:
        self.source, self.seed, self.rank = source, seed, rank

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.batch(*step_seeds(self.seed, self.rank, step))


class _StepsFrom(torch.utils.data.Sampler):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def batches_from(source: BatchSource, cfg: TrainConfig, rank: int, start: int):
    """The batches of steps ``start``, ``start + 1``, ...: rendered by ``cfg.workers`` background processes
    (one torch thread each) while the main process trains, or in the main process when ``workers`` is 0."""
    loader = torch.utils.data.DataLoader(
        StepBatches(source, cfg.seed, rank), batch_size=None, sampler=_StepsFrom(start),
        num_workers=cfg.workers, worker_init_fn=_one_thread if cfg.workers else None,
        prefetch_factor=2 if cfg.workers else None, persistent_workers=bool(cfg.workers))
    return iter(loader)


def starting_network(cfg: TrainConfig) -> UNet3D:
    """The new network of ``cfg.plan()``, or ``cfg.init_model``'s weights (which ``cfg`` must have taken the plan
    of, since export builds the result from ``cfg.plan()``); a model made before the Patella class gets a head
    grown to every class (``with_classes``), since the synthetic images label the patella; a run whose plan has
    wider stages than the init model (``train --widen``) starts from its weights widened (``widened``)."""
    plan = cfg.plan()
    if not cfg.init_model:
        return build_network(plan)
    net = load_model(cfg.init_model).network
    if net.config.out_channels < NUM_CLASSES:
        net = with_classes(net, NUM_CLASSES)
    if net.config.features != plan.network.features and len(net.config.features) == len(plan.network.features):
        net = widened(net, plan.network.features, seed=cfg.seed)
    if net.config != plan.network:
        raise ValueError(f"the run's network {plan.network} is not its init model's {net.config}: "
                         "the run must take the init model's plan (TrainConfig.take_plan)")
    return net.train()


def autocast(device: torch.device, cfg: TrainConfig):
    """Mixed precision: float16 on CUDA; bfloat16 on a CPU that computes it natively (AMX / AVX-512 bf16:
    a 96^3 step of a 16-32-64-128 U-Net 1.4 s instead of 8.7 s in float32); float32 elsewhere."""
    if not cfg.amp:
        return torch.autocast(device_type=device.type, enabled=False)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_fast_bf16())


def train(cfg: TrainConfig, resume: bool = True, log=print) -> dict:
    """Runs (or resumes) the run in ``cfg.run_dir``; returns a summary (steps, time, best score)."""
    d = setup_distributed()
    try:
        with ranges.overridden(cfg.synthesis):  # the run's own synthesis settings, its workers included
            return _train(cfg, d, resume, log)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, resume: bool, log) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(cfg.run_dir)
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        clear_result(run)
        cfg.save(run / CONFIG_FILE)
    if d.world > 1:
        dist.barrier()
    torch.manual_seed(cfg.seed + d.rank)
    random.seed(cfg.seed + d.rank)
    rng = np.random.default_rng(cfg.seed * 1000 + d.rank)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)

    maps = load_dataset(Path(cfg.dataset))
    train_maps = [m for m in maps if m.role == "train"]
    pre = cfg.plan().preprocessing
    generator = Generator(train_maps, pre.spacing_mm, cfg.crop, pre.normalization)
    cases = None
    if cfg.cases:
        from .cases import CaseSampler, load_cases

        cases = CaseSampler(load_cases(Path(cfg.cases)), pre.spacing_mm, cfg.crop, pre.normalization)
    source = BatchSource(cfg, generator, cases)
    val_samples = validation_samples(cfg, maps, Generator(maps, pre.spacing_mm, pre.patch_size, pre.normalization)) \
        if d.main else []

    net = starting_network(cfg).to(d.device)
    model = torch.nn.parallel.DistributedDataParallel(net) if d.world > 1 else net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup, cfg.steps, cfg.min_lr_fraction))
    use_amp = cfg.amp and d.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=d.device)

    step, best, bad, elapsed0 = 0, -1.0, 0, 0.0
    if resume and (run / LAST).is_file():
        ck = load_checkpoint(run / LAST)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        step, best, bad, elapsed0 = ck["step"], ck["best"], ck["bad"], ck["elapsed_s"]
        set_rng_state(ck["rng"][d.rank], rng, gen)
        log(f"resumed {run / LAST} at step {step}") if d.main else None
    if d.main:
        rewrite_csv(run / TRAIN_LOG, TRAIN_COLUMNS, step)
        rewrite_csv(run / VAL_LOG, VAL_COLUMNS, step)

    def checkpoint() -> None:
        states = [rng_state(rng, gen)]
        if d.world > 1:
            states = [None] * d.world
            dist.all_gather_object(states, rng_state(rng, gen))
        if d.main:
            atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "step": step, "best": best, "bad": bad,
                          "elapsed_s": elapsed0 + time.perf_counter() - t_start, "rng": states,
                          "config": cfg.__dict__}, run / LAST)

    t_start = time.perf_counter()
    window: list[dict] = []
    recent: list[float] = []  # seconds per step since the last budget fit
    stop_reason = "steps"
    bar = tqdm(total=cfg.steps, initial=step, disable=not d.main, desc="train", dynamic_ncols=True)
    batches = batches_from(source, cfg, d.rank, step)
    model.train()
    while step < cfg.steps:
        t0 = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(d.device), y.to(d.device)
        with autocast(d.device, cfg):
            logits = model(x)
        loss, parts = dice_ce_loss(logits, y, weights)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        window.append({"loss": float(loss.detach()), **parts, "t": time.perf_counter() - t0})
        recent.append(window[-1]["t"])
        bar.update(1)
        if d.main and (step % cfg.log_every == 0 or step == cfg.steps):
            row = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "ce", "dice_loss")}
            row.update(step=step, elapsed_s=round(elapsed0 + time.perf_counter() - t_start, 1),
                       lr=opt.param_groups[0]["lr"], s_per_step=round(float(np.mean([w["t"] for w in window])), 3))
            append_csv(run / TRAIN_LOG, TRAIN_COLUMNS, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", s_step=row["s_per_step"])
            window = []
        if cfg.budget_minutes and (step == CALIBRATION_STEPS or step % cfg.val_every == 0):
            fit_budget(cfg, d, step, elapsed0 + time.perf_counter() - t_start, recent, run)
            bar.total = cfg.steps
        flags = torch.zeros(2)
        if d.main and (step % cfg.val_every == 0 or step == cfg.steps):
            res = validate(net, val_samples, d.device)
            append_csv(run / VAL_LOG, VAL_COLUMNS, {"step": step, **res})
            if res["score"] > best:
                best, bad = res["score"], 0
                atomic_save({"model": net.state_dict(), "step": step, "validation": res}, run / BEST)
            else:
                bad += 1
            plot_curves(run)
            log(f"step {step}: validation " + ", ".join(f"{k}={v:.3f}" for k, v in res.items()
                                                        if isinstance(v, float)))
            flags[0] = float(bad >= cfg.patience)
        if d.main:
            minutes = (elapsed0 + time.perf_counter() - t_start) / 60
            flags[1] = float((run / STOP_FILE).exists() or (cfg.max_minutes and minutes >= cfg.max_minutes))
        if d.world > 1:
            dist.broadcast(flags, 0)
        if step % cfg.checkpoint_every == 0 or flags.any() or step == cfg.steps:
            checkpoint()
        if flags[0]:
            stop_reason = "early stopping"
            break
        if flags[1]:
            stop_reason = "stop requested or time limit"
            break
    bar.close()
    if d.main and not (run / BEST).is_file():  # e.g. a tiny run that never validated
        atomic_save({"model": net.state_dict(), "step": step, "validation": {}}, run / BEST)
    summary = {"steps": step, "elapsed_s": elapsed0 + time.perf_counter() - t_start, "best_score": best,
               "stop_reason": stop_reason, "world_size": d.world, "device": str(d.device)}
    if d.main:
        # A plain training's model is exported later (``export``); a fine-tuning names it (``finetune``).
        write_result(run, None, None, step, **{k: v for k, v in summary.items() if k != "steps"})
        log(f"finished: {summary}")
    return summary
