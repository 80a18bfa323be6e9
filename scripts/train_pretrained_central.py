"""Train the central model that ships with c2lst (``tiny-sim``), bit for bit from a seed.

The corpus is simulated multi-institution H&E: every slide comes from :func:`c2lst.datasets.simulated_visium`
with one of four *corpus* stains (the ``institution_a`` / ``institution_b`` presets and two blends of them with
their own blur and noise) and its own tissue seed. The ``local`` stain and the local slides' seeds (0-99) are
never used, so the demo's local slide stays unseen by the central model.

Run (about 45 min on one CPU core; one thread keeps the floating-point order, hence the bytes, fixed)::

    OMP_NUM_THREADS=1 python scripts/train_pretrained_central.py --out /tmp/tiny-sim
    python scripts/train_pretrained_central.py --out /tmp/tiny-sim --install   # copy into the package

``--install`` converts the EMA weights to float16, writes them under ``src/c2lst/datasets/_pretrained/tiny-sim``
with the recipe and training summary in its ``c2lst.json``, and records their sha256 in
``src/c2lst/datasets/_pretrained.py`` (``PRETRAINED``), which :func:`c2lst.datasets.pretrained_central` checks.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import c2lst
from c2lst.datasets._stain import STAIN_PRESETS

#: Shipped model name -> recipe. Changing a value changes the weights: retrain and re-ship.
RECIPE = {
    "name": "tiny-sim",
    "preset": "tiny",
    "size": 32,
    "slide_seeds": [101, 102, 103],
    "spots_per_slide": 250,
    "n_steps": 6000,
    "batch_size": 32,
    "lr": 1e-3,
    "seed": 0,
}


def corpus_stains() -> list[dict]:
    """The four corpus stains: two presets and two blends (weights 0.25 / 0.75) with their own blur and noise."""
    a, b = STAIN_PRESETS["institution_a"], STAIN_PRESETS["institution_b"]
    out: list[dict] = [{"base": "institution_a"}, {"base": "institution_b"}]
    for t, blur, noise in ((0.25, 0.8, 2.5), (0.75, 0.3, 1.8)):
        mix = {"base": "institution_a", "blur_um": blur, "noise": noise}
        for key in ("hematoxylin", "eosin", "background"):
            mix[key] = tuple(float((1 - t) * x + t * y) for x, y in zip(a[key], b[key], strict=True))
        for key in ("h_intensity", "e_intensity"):
            mix[key] = float((1 - t) * a[key] + t * b[key])
        out.append(mix)
    return out


def build_corpus(recipe: dict) -> list:
    """Simulate and patch every corpus slide (one slide per stain and seed)."""
    slides = []
    for seed in recipe["slide_seeds"]:
        for stain in corpus_stains():
            sd = c2lst.datasets.simulated_visium(n_spots=recipe["spots_per_slide"], seed=seed, stain=stain)
            c2lst.pp.extract_patches(sd, size=recipe["size"], progress=False)
            slides.append(sd)
    return slides


def local_stain_distance() -> float:
    """Smallest L2 distance (hematoxylin + eosin optical-density vectors) from the local stain to a corpus stain."""
    local = STAIN_PRESETS["local"]
    dists = []
    for stain in corpus_stains():
        full = {**STAIN_PRESETS[stain["base"]], **stain}
        dists.append(
            float(np.linalg.norm(np.r_[full["hematoxylin"], full["eosin"]] - np.r_[local["hematoxylin"], local["eosin"]]))
        )
    return min(dists)


def train(out: Path, recipe: dict) -> Path:
    """Pretrain with the recipe into ``out`` (resumable) and return the model directory."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    slides = build_corpus(recipe)
    print(f"corpus: {len(slides)} slides, {sum(s.tables['table'].n_obs for s in slides)} patches "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model = c2lst.tl.pretrain(
        slides, preset=recipe["preset"], n_steps=recipe["n_steps"], batch_size=recipe["batch_size"],
        lr=recipe["lr"], seed=recipe["seed"], output_dir=out, resume=True, device="cpu", progress=False,
        balance="patches",  # the shipped weights were trained before slide-balanced batches (issue 18)
    )
    print(f"pretrained {recipe['n_steps']} steps in {time.perf_counter() - t0:.0f} s, "
          f"loss {model.training_summary['loss_last']:.4f}, sha256 {model.sha256}", flush=True)
    return out / "model"


def install(model_dir: Path, recipe: dict, dest: Path) -> str:
    """Write the float16 copy of ``model_dir`` to ``dest`` and return its sha256."""
    from c2lst.models import CentralModel

    model = CentralModel.from_pretrained(model_dir)
    fp32_sha = model.sha256
    model.half()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.training_summary = {
        **model.training_summary,
        "recipe": recipe,
        "float32_sha256": fp32_sha,
        "local_stain_min_distance": round(local_stain_distance(), 4),
    }
    sha = model.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sha


def record_sha(name: str, sha: str) -> None:
    """Write ``sha`` as the recorded sha256 of ``name`` in ``c2lst/datasets/_pretrained.py``."""
    module = Path(c2lst.__file__).parent / "datasets" / "_pretrained.py"
    text = module.read_text()
    pattern = re.compile(r'(\n    "' + re.escape(name) + r'": \{\n        "sha256": ")[0-9a-f]*(")')
    new, n = pattern.subn(lambda m: m.group(1) + sha + m.group(2), text)
    if n != 1:
        raise RuntimeError(f"could not find the sha256 entry of {name!r} in {module}")
    module.write_text(new)


def main() -> None:
    """Train (or reuse the finished run in ``--out``), then install when asked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="training directory (checkpoints + model/)")
    parser.add_argument("--install", action="store_true", help="copy the fp16 model into the package")
    parser.add_argument("--steps", type=int, default=None, help="override n_steps (smoke runs only)")
    args = parser.parse_args()
    recipe = dict(RECIPE)
    if args.steps is not None:
        recipe["n_steps"] = args.steps
    model_dir = args.out / "model"
    if not (model_dir / "c2lst.json").is_file() or json.loads((model_dir / "c2lst.json").read_text())[
        "training"
    ].get("steps") != recipe["n_steps"]:
        model_dir = train(args.out, recipe)
    if args.install:
        dest = Path(c2lst.__file__).parent / "datasets" / "_pretrained" / recipe["name"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        sha = install(model_dir, recipe, dest)
        record_sha(recipe["name"], sha)
        print(json.dumps({"model": recipe["name"], "sha256": sha, "path": str(dest)}))


if __name__ == "__main__":
    main()
