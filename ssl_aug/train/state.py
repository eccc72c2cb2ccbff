"""Checkpoint state of a run: what `Trainer.state_dict()` saves and `load_state_dict()` restores.

Shared by all ranks: config, model (rank-local buffers excepted), optimiser, schedule, AMP scaler,
step/epoch, metric history. Per rank (``ranks[r]`` when world_size > 1, else top-level ``rng`` and
``batch_source``): the CPU torch RNG, the view generator, this rank's CUDA RNG (``rng["cuda"]``, the
state of the rank's own device), the data position and rank-local buffers (e.g. a SwAV queue).

RNG states are restored from CPU tensors (checkpoints are always read with map_location="cpu";
``torch.set_rng_state`` and ``Generator.set_state`` accept CPU ByteTensors only). What "bit-identical"
means: on CPU, a resumed run equals the uninterrupted one exactly. On CUDA the random streams are
restored exactly too, but cuDNN/scatter kernels are not deterministic by default, so only runs with
``train.deterministic = true`` (deterministic algorithms, slower) are expected to match bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_aug import distributed as dist
from ssl_aug._version import __version__
from ssl_aug.checkpoint import FORMAT, VERSION
from ssl_aug.errors import SslAugError

__all__ = ["rng_state", "set_rng_state", "rank_state", "trainer_state", "load_trainer_state", "changed_keys",
           "RESUME_MAY_CHANGE", "extension_allowed"]

# Recipe keys a resumed run may change: they decide where files go, how often it logs or keeps files, and
# what is evaluated, never what is trained. Everything else must equal the checkpoint's recipe.
RESUME_MAY_CHANGE = ("description", "output_dir", "data.root", "data.download", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.threads", "train.strict",
                     "train.check_fit", "eval.")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every recipe key that differs and may not change on resume.
    Keys the saved recipe lacks (written by an older ssl_aug) are taken as their current defaults."""
    old, new = _flat(saved), _flat(current)
    allowed = lambda key: any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if key in old and old.get(key) != new.get(key) and not allowed(key)]


def rng_state(view_generator: torch.Generator, device: torch.device) -> dict:
    """{"torch": CPU RNG, "views": view generator, "cuda": this device's CUDA RNG (CUDA only)} as CPU tensors."""
    state = {"torch": torch.get_rng_state(), "views": view_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, view_generator: torch.Generator, device: torch.device) -> None:
    """Restore what `rng_state` saved (tensors moved to CPU first, wherever they were loaded)."""
    torch.set_rng_state(state["torch"].cpu())
    view_generator.set_state(state["views"].cpu())
    if device.type == "cuda" and "cuda" in state:
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints before 0.2 saved every device's state
            cuda = cuda[device.index or 0]
        torch.cuda.set_rng_state(cuda.cpu(), device)


def rank_state(trainer) -> dict:
    """What differs between ranks: random generators, the data shard position, rank-local buffers."""
    local = {"rng": rng_state(trainer.view_generator, trainer.device), "batch_source": trainer.source.state_dict()}
    if trainer.method.rank_local_buffers:
        local["buffers"] = {k: v.detach().cpu() for k, v in trainer.method.named_buffers()}
    return local


def trainer_state(trainer) -> dict:
    """The checkpoint dict of a trainer. A collective with several ranks (every rank must call it)."""
    local = rank_state(trainer)
    state = {"format": FORMAT, "version": VERSION, "config": trainer.cfg.to_dict(),
             "model": trainer.method.state_dict(), "optimizer": trainer.optimizer.state_dict(),
             "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
             "rng": local["rng"], "batch_source": local["batch_source"], "step": trainer.step,
             "epoch": trainer.epoch, "world_size": trainer.world_size, "metrics": trainer.history,
             "epoch_loss": dict(trainer.epoch_loss), "metric_lines": trainer.metrics.lines,
             "versions": {"ssl_aug": __version__, "torch": str(torch.__version__)}}
    if trainer.world_size > 1:
        state["ranks"] = dist.all_gather_object(local)
        # the top level is rank 0's on every rank, so every node writes the same bytes (resume compares hashes)
        first = dist.all_gather_object({"epoch_loss": {"sum": trainer.epoch_loss["sum"].cpu(),
                                                       "count": trainer.epoch_loss["count"]},
                                        "metric_lines": trainer.metrics.lines} if trainer.rank == 0 else None)[0]
        state.update(rng=state["ranks"][0]["rng"], batch_source=state["ranks"][0]["batch_source"], **first)
        state["model"].update(state["ranks"][0].get("buffers", {}))
    return state


def extension_allowed(saved: dict, cfg, path: Path) -> dict:
    """The checkpoint's recipe with train.epochs taken from `cfg` when the resume extends the run (more
    epochs: a new cosine tail); fewer epochs are refused in one line."""
    old, new = saved["train"]["epochs"], cfg.train.epochs
    if new == old:
        return saved
    if new < old:
        raise SslAugError(f"checkpoint {path} was trained for train.epochs = {old}; a resume can extend a run "
                          f"(more epochs: a new cosine tail from the resume step) but not shorten it to {new}: "
                          f"use the checkpoint as it is (ssl-aug eval / export), or train a new run")
    return dict(saved, train=dict(saved["train"], epochs=new))


def load_trainer_state(trainer, ckpt: dict, path: Path) -> None:
    """Restore a trainer from a checkpoint dict read with map_location="cpu"; one-line errors for
    checkpoints of another backbone, world size or model shape."""
    saved = ckpt["config"]["model"]["backbone"]
    if saved != trainer.cfg.model.backbone:
        raise SslAugError(f"checkpoint {path} was trained with backbone {saved!r}, "
                          f"the recipe asks for {trainer.cfg.model.backbone!r}")
    saved_cfg = extension_allowed(ckpt["config"], trainer.cfg, path)
    if trainer.cfg.model.sync_batchnorm == "auto" and saved_cfg.get("model", {}).get("sync_batchnorm") is getattr(
            trainer, "sync_batchnorm", None):  # a run from before "auto" whose true/false is what "auto" does here
        saved_cfg = {**saved_cfg, "model": {**saved_cfg["model"], "sync_batchnorm": "auto"}}
    changed = changed_keys(saved_cfg, trainer.cfg.to_dict())
    if changed:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed[:8]) + (" ..." if len(changed) > 8 else "")
        raise SslAugError(f"checkpoint {path} was trained with other settings ({listed}); resume with the recipe "
                          f"it was trained with (ssl-aug train {trainer.run_dir} --resume reads it) or use another "
                          f"output_dir; resuming may change only train.epochs (more: a new cosine tail) and "
                          f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUME_MAY_CHANGE)}")
    if ckpt.get("world_size", 1) != trainer.world_size:
        old = ckpt.get("world_size", 1)
        raise SslAugError(f"checkpoint {path} was written with world size {old}, this run has world size "
                          f"{trainer.world_size}: resume with {old} processes in all "
                          f"(torchrun --nnodes x --nproc-per-node = {old}; the data position, view RNG and "
                          f"rank-local buffers are kept per rank), or start a new output_dir")
    local = ckpt["ranks"][trainer.rank] if "ranks" in ckpt else {}
    model_state = dict(ckpt["model"], **local.get("buffers", {}))
    try:
        trainer.method.load_state_dict(model_state)
    except RuntimeError as exc:
        raise SslAugError(f"checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}") from None
    trainer.optimizer.load_state_dict(ckpt["optimizer"])  # moves the state to the parameters' device
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    if "segments" not in ckpt["scheduler"]:  # written before schedules could be extended
        old = ckpt["config"]["train"]
        total = old["epochs"] * trainer.steps_per_epoch
        trainer.scheduler.segments = [[0, min(total, old["max_steps"]) if old.get("max_steps") else total]]
    trainer.extended = trainer.scheduler.segments[-1][1] != trainer.total_steps
    if trainer.extended:  # a new cosine tail from this step to the new end
        segments = [list(s) for s in trainer.scheduler.segments]
        trainer.scheduler.segments = segments + [[ckpt["step"], trainer.total_steps]]
        for group, base in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs):
            group["lr"] = base * trainer.scheduler.lr_lambdas[0](ckpt["step"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(local.get("rng", ckpt["rng"]), trainer.view_generator, trainer.device)
    trainer.source.load_state_dict(local.get("batch_source", ckpt["batch_source"]))
    trainer.step, trainer.epoch = ckpt["step"], ckpt["epoch"]
    trainer.history = list(ckpt.get("metrics", []))
    loss = ckpt.get("epoch_loss")
    if loss is not None:
        trainer.epoch_loss = {"sum": loss["sum"].to(trainer.device), "count": loss["count"]}
    trainer.metrics.lines = ckpt.get("metric_lines", 0)
