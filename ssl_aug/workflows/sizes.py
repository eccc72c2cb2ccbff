"""Size and count keys of a recipe checked against the data they apply to, before anything trains.

`check_sizes(cfg, train, test=None, bank=None) -> notes`: raises SslAugError (one line naming the key, its value and
the largest allowed) for data.subset, train.batch_size, eval.knn_k, eval.monitor_* and the crop sizes
that the loaded data cannot satisfy; returns one-line notes for what is allowed but worth saying
(e.g. crops upsampled from smaller images). `train` / `test` / `bank` (the labelled kNN bank, default
`train`): ImageDataset with images (N, 3, H, W) and labels (N,); None (streamed data, no evaluation):
those checks are skipped.
"""

from __future__ import annotations

from ssl_aug.errors import SslAugError

__all__ = ["check_sizes"]


def _fail(key: str, value, why: str) -> None:
    raise SslAugError(f"recipe key '{key}' = {value!r} {why}")


def check_sizes(cfg, train, test=None, bank=None) -> list[str]:
    """Refuse size/count keys the data cannot satisfy; return notes (one line each) to print."""
    from ssl_aug.augment.recipe import views_of

    specs, counts = views_of(cfg).specs, views_of(cfg).counts
    if sum(counts) < 2:
        _fail("augment.views", cfg.augment.get("views", 2), "gives fewer than 2 views per image; contrastive "
              "methods compare at least 2 (use augment.views = 2)")
    local = (cfg.augment.get("multicrop") or {}).get("local_views", 0) if cfg.augment.get("preset") is None else 0
    if local and specs[1].size >= specs[0].size:  # presets may have equal-size families (BYOL's asymmetric views)
        _fail("augment.multicrop.size", specs[1].size, f"must be smaller than the global crop size "
              f"augment.size = {specs[0].size} (local crops are the small ones)")
    if train is None:
        return []
    n_train = len(train.labels)
    n_test = len(test.labels) if test is not None else None
    n_bank = len(bank.labels) if bank is not None else n_train
    full = n_train  # data.subset applies to the training split; a larger subset leaves it whole
    if n_train == 0:
        raise SslAugError(f"the training split of data set {cfg.data.name!r} has no images")
    if cfg.data.subset and cfg.data.subset > full:
        _fail("data.subset", cfg.data.subset, f"is larger than the training split ({full} images); "
              f"use at most {full}, or 0 for all")
    if cfg.train.batch_size > n_train:
        _fail("train.batch_size", cfg.train.batch_size, f"is larger than the training set ({n_train} images); "
              f"use at most {n_train}")
    ev = cfg.eval
    if (ev.final_knn or ev.knn_every) and n_test is not None:
        if n_test == 0:
            raise SslAugError(f"eval.test_split = {ev.test_split!r} of data set {cfg.data.name!r} has no images; "
                              "choose another split or set eval.final_knn = false")
        if ev.final_knn and ev.knn_k > n_bank:
            _fail("eval.knn_k", ev.knn_k, f"is larger than the kNN bank ({n_bank} labelled training images); "
                  f"use at most {n_bank}")
    if ev.knn_every:
        for key, value in (("eval.monitor_train", ev.monitor_train), ("eval.monitor_test", ev.monitor_test)):
            if value < 1:
                _fail(key, value, "must be >= 1 when eval.knn_every > 0 (or set eval.knn_every = 0)")
        monitor = min(ev.monitor_train, n_bank)
        if ev.knn_k > monitor:
            _fail("eval.knn_k", ev.knn_k, f"is larger than the kNN monitor's bank ({monitor} images: "
                  f"eval.monitor_train = {ev.monitor_train}, {n_bank} labelled training images); "
                  f"use at most {monitor}")
    notes = []
    height, width = train.images.shape[-2:]
    if max(s.size for s in specs) > min(height, width):
        biggest = max(s.size for s in specs)
        notes.append(f"note: crops of {biggest} px are upsampled from {height}x{width} px images "
                     f"(augment.size = {specs[0].size}); set a smaller augment.size to avoid it")
    return notes
