"""Search strategy "tanda" (`strategy = "tanda"` in a search spec, settings in [tanda]): learn a TF sequence
(tanda.py) on the base recipe's training images, write it as a recipe and measure it like a TPE search's
best policy (compare.py: the base recipe vs the learned sequence on the test split, over compare_seeds).

Search directory: tanda.json (the resolved spec, its hash, the learned probabilities, history, wall and
CPU time), tanda.md (top TFs per position and every probability), best_recipe.toml (the base recipe with
augment.tf_sequence set), report.md, and with compare_seeds compare/, compare.md, compare.json. A
search rerun with the same spec reuses tanda.json (the learner is seeded) and finished comparison runs;
another spec in the same directory is refused before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_aug.config import config_from_dict
from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write_json, atomic_write_text
from ssl_aug.workflows.search.report import dump_toml
from ssl_aug.workflows.search.tanda import TandaResult, TandaSettings, learn_tf_sequence, top_tfs

__all__ = ["run_tanda_search", "learned_recipe", "probability_table", "LOG_FILE"]

LOG_FILE = "tanda.json"


def _rounded(probs: list) -> list:
    """Probabilities rounded to 6 decimals (each row still sums to 1 within 1e-5)."""
    return [[round(float(v), 6) for v in row] for row in probs]


def learned_recipe(spec, result: TandaResult) -> dict:
    """The base recipe (with base_overrides) plus augment.tf_sequence = the learned probabilities."""
    recipe = json.loads(json.dumps(spec.base))
    recipe.setdefault("augment", {})["tf_sequence"] = {"probs": _rounded(result.probs), "m": result.m}
    recipe["output_dir"] = f"runs/{spec.out_dir.name}_best"
    recipe["description"] = f"TF sequence learned by search {spec.out_dir.name} (TANDA, mean-field)"
    return recipe


def probability_table(result: TandaResult) -> str:
    """Markdown: per position the top 3 TFs, then every TF's probability per position."""
    from ssl_aug.augment.ops import tf_names

    lines = ["| position | top TFs (probability) |", "|---|---|"]
    for pos, top in enumerate(top_tfs(result.probs, 3)):
        lines.append(f"| {pos + 1} | " + ", ".join(f"{name} {p:.3f}" for name, p in top) + " |")
    head = [f"p{pos + 1}" for pos in range(len(result.probs))]
    lines += ["", "| TF | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for j, name in enumerate(tf_names()):
        lines.append(f"| {name} | " + " | ".join(f"{row[j]:.3f}" for row in result.probs) + " |")
    return "\n".join(lines) + "\n"


def _learn(spec, search_dir: Path, progress: bool) -> TandaResult:
    """Learn (or reuse the record of the same spec) and write tanda.json."""
    from ssl_aug.workflows.search.spec import spec_hash
    from ssl_aug.train import load_training_data

    digest = spec_hash(spec.raw, spec.base)
    log = search_dir / LOG_FILE
    if log.is_file():
        old = json.loads(log.read_text())
        if old.get("hash") != digest:
            raise SslAugError(f"search directory {search_dir} holds a search with another spec (base recipe or "
                              f"[tanda] settings changed); use another output_dir or delete the folder")
        print(f"tanda: reusing the sequence learned in {log}", flush=True)
        return TandaResult(**old["result"])
    settings = TandaSettings(**spec.raw["tanda"])
    train = load_training_data(config_from_dict(spec.base), split="train").decoded()
    result = learn_tf_sequence(train.images, train.images, settings, progress=progress)
    search_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(log, {"spec": spec.raw, "base": spec.base, "spec_path": str(spec.path), "hash": digest,
                            "images": len(train.images), "result": result.__dict__})
    return result


def run_tanda_search(spec, compare_seeds: int, progress: bool = True,
                     report_only: bool = False) -> tuple[str, list[Path]]:
    """Learn the TF sequence of `spec` (strategy "tanda"), write its recipe, log and report, and with
    compare_seeds > 0 the test-split comparison with the base recipe; -> (report Markdown, files written)."""
    search_dir = spec.out_dir
    if report_only and not (search_dir / LOG_FILE).is_file():
        raise SslAugError(f"no search in {search_dir} to report on; run it first (without --report-only)")
    result = _learn(spec, search_dir, progress)
    recipe = learned_recipe(spec, result)
    from ssl_aug.augment.recipe import views_of

    views_of(config_from_dict(recipe)).build()  # the recipe loads and its views build before it is written
    header = (f"TF sequence learned by TANDA (mean-field generator, REINFORCE) in {spec.out_dir}.\n"
              f"Train it: ssl-aug train {search_dir / 'best_recipe.toml'}")
    table = probability_table(result)
    t = spec.raw["tanda"]
    last = result.history[-1] if result.history else {}
    lines = [f"## Search (strategy tanda): {spec.raw.get('description') or spec.path.stem}", "",
             f"Base recipe: `{spec.raw['base'] if isinstance(spec.raw['base'], str) else '(inline)'}`; a mean-field "
             f"TANDA generator of {t['length']} TFs (kornia's RandAugment set at magnitude {t['m']:g} of 30) trained "
             f"{t['steps']} steps (batch {t['batch_size']}, lr {t['lr']:g}, entropy weight {t['entropy_weight']:g}, "
             f"distance weight {t['distance_weight']:g}, seed {t['seed']}) against a CNN discriminator on the base "
             f"recipe's training images; learner {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU. Last step: "
             f"reward {last.get('reward', float('nan')):.3f}, D(real) {last.get('d_real', float('nan')):.3f}, "
             f"D(sequence) {last.get('d_fake', float('nan')):.3f}.", "", table]
    files = [atomic_write_text(search_dir / "tanda.md", table),
             atomic_write_text(search_dir / "best_recipe.toml", dump_toml(recipe, header))]
    if compare_seeds:
        from ssl_aug.workflows.search.compare import compare_recipes

        text, written = compare_recipes(spec, recipe, "The TANDA-learned TF sequence (best policy)", search_dir,
                                        compare_seeds, held_out=False, progress=progress,
                                        summary={"strategy": "tanda", "probs": recipe["augment"]["tf_sequence"]})
        lines += ["", text]
        files += written
    report = "\n".join(lines) + "\n"
    files.append(atomic_write_text(search_dir / "report.md", report))
    return report, files
