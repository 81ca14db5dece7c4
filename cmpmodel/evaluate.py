"""How well a trained CMP propagates sparse guidance, against three baselines.

For every sample of a split, on the whole frame (:func:`cmpmodel.data.eval_inputs`: padded to
a multiple of 8), four dense flows are compared with a reference flow, every method given the
same guidance:

- ``model``: the network's prediction (the expectation over the bins), upsampled bilinearly
  to the padded frame and cropped back to it;
- ``zero``: no motion anywhere;
- ``nearest``: each pixel takes the vector of its nearest guidance point;
- ``idw``: inverse-distance weighting of all guidance vectors, weight ``1 / d**2`` (a pixel on
  a guidance point takes its vector).

The reference is a sample's exact flow when it has one (a synthetic clip's, stored with it:
:mod:`cmpdata.synth.truth`), with its visibility as the valid pixels, and its stored flow
otherwise (real footage). The guidance vectors are the reference's at the guidance points,
and the stored flow's own error against the exact flow is reported beside.

The guidance comes in several amounts (:data:`SETTINGS`), each drawn per sample with a
generator seeded by (``guidance_seed``, sample id, setting):

- ``paper``: the training guidance sampler stored in the checkpoint (the paper's watershed +
  grid by default), as in training;
- ``1``, ``2``, ``4``, ``8``, ``16``: that many pixels drawn uniformly among the valid ones;
- ``per_object``: one valid pixel of each layer visible in the frame, the background (the
  camera's motion) counting as a layer; synthetic samples only.

A sample without any guidance point gives ``nearest`` and ``idw`` zero flow (there is
nothing to propagate), and all its pixels count as far from guidance.

The score is the end-point error ``|predicted - true|`` in px, averaged over every valid pixel
of every sample (pixel-weighted, not per-sample); over the valid pixels farther than
:data:`FAR_DISTANCE` px from any guidance point (``epe_far``), where the guidance alone says
least; and over the valid pixels whose nearest guidance point lies on another object
(``epe_other``, synthetic samples only: it needs their object ids), where copying the
nearest guide is wrong by construction and a model has to know where an object ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from tqdm import tqdm

from cmpdata.errors import ConfigError, UsageError
from cmpdata.guidance import GuidanceConfig
from cmpdata.records import Guidance
from cmpdata.seeding import sample_rng
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.shards import StoredSample
from cmpdata.synth.truth import read_truth
from cmpmodel.data import eval_inputs, guidance_at, random_guidance, valid_mask
from cmpmodel.loss import dense_flow
from cmpmodel.train import guidance_of_map, load_model

FAR_DISTANCE = 16.0  # px: "far from guidance" means strictly farther than this
METHODS = ("model", "zero", "nearest", "idw")
GUIDE_COUNTS = (1, 2, 4, 8, 16)  # random guides a frame, the curve's points
PAPER = "paper"
PER_OBJECT = "per_object"
SETTINGS = (PAPER, *(str(k) for k in GUIDE_COUNTS), PER_OBJECT)
REGIONS = ("epe", "epe_far", "epe_other")
_IDW_CHUNK = 1 << 16  # pixels per block of the (pixels x points) distance matrix


def nearest_guide(sparse: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For each pixel of a (4, H, W) guidance map, the row and column of its nearest guidance
    point (int (H, W) each) and the Euclidean distance to it (float64 (H, W) px); ``None``
    when the map holds no point."""
    marked = sparse[2] > 0
    if not marked.any():
        return None
    distance, (rows, cols) = distance_transform_edt(~marked, return_indices=True)
    return rows, cols, distance


def nearest_flow(sparse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's nearest guidance vector, float32 (H, W, 2) px, and its Euclidean distance
    to the nearest guidance point, float64 (H, W) px; zero flow and infinite distances when
    the (4, H, W) map ``sparse`` holds no point."""
    h, w = sparse.shape[1:]
    nearest = nearest_guide(sparse)
    if nearest is None:
        return np.zeros((h, w, 2), np.float32), np.full((h, w), np.inf)
    rows, cols, distance = nearest
    return np.ascontiguousarray(sparse[:2, rows, cols].transpose(1, 2, 0)), distance


def other_object_pixels(sparse: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels whose nearest guidance point of the (4, H, W) map lies on
    another object than their own (``objects``: int (H, W) ids); none without a point."""
    nearest = nearest_guide(sparse)
    if nearest is None:
        return np.zeros(objects.shape, bool)
    rows, cols, _ = nearest
    return objects[rows, cols] != objects


def object_guidance(
    flow: np.ndarray, valid: np.ndarray, objects: np.ndarray, rng: np.random.Generator
) -> Guidance:
    """One pixel drawn uniformly among the ``valid`` pixels of each object id in ``objects``
    (int (H, W); the background, id 0, is one of them), in id order, with its ``flow``."""
    ys, xs = [], []
    for label in np.unique(objects[valid]):
        rows, cols = np.nonzero(valid & (objects == label))
        pick = rng.integers(len(rows))
        ys.append(rows[pick])
        xs.append(cols[pick])
    return guidance_at(flow, np.array(ys, np.int64), np.array(xs, np.int64))


def idw_flow(sparse: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Inverse-distance-weighted guidance, float32 (H, W, 2) px, from a (4, H, W) map.

    Every pixel averages all guidance vectors with weights ``1 / d**power`` (``d`` its
    distance to the point, px); a pixel on a point takes that point's vector. Zero flow when
    there is no point.
    """
    h, w = sparse.shape[1:]
    guidance = guidance_of_map(sparse)
    points, vectors = guidance.points.astype(np.float64), guidance.vectors
    out = np.zeros((h * w, 2), np.float32)
    if len(points) == 0:
        return out.reshape(h, w, 2)
    ys, xs = np.divmod(np.arange(h * w), w)
    pixels = np.stack([xs, ys], axis=1).astype(np.float64)
    for start in range(0, h * w, _IDW_CHUNK):
        block = pixels[start : start + _IDW_CHUNK]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        on_point = squared == 0
        with np.errstate(divide="ignore"):
            weights = squared ** (-power / 2)
        # A pixel on a point: that point alone (its weight would be infinite).
        hit = on_point.any(axis=1)
        weights[hit] = on_point[hit]
        out[start : start + len(block)] = (weights @ vectors) / weights.sum(axis=1, keepdims=True)
    return out.reshape(h, w, 2)


def cropped_flows(
    logits: torch.Tensor, padded: Sequence[int], size: Sequence[int], flow_range: float
) -> np.ndarray:
    """The flows of a batch of ``logits``, decoded at the ``padded`` (H, W) of the model's
    input and cropped to the unpadded ``size``: float32 (B, H, W, 2) px; ``flow_range`` is the
    half-range of the bins (px)."""
    h, w = size
    flow = dense_flow(logits, padded, flow_range)
    return flow[:, :, :h, :w].permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


def model_flow(
    model: torch.nn.Module, inputs: dict[str, Any], flow_range: float, device: torch.device
) -> np.ndarray:
    """The model's flow for one :func:`eval_inputs` item, float32 (H, W, 2) px at the
    unpadded size; ``flow_range`` is the half-range of its bins (px)."""
    image = inputs["image"][None].to(device)
    sparse = inputs["sparse"][None].to(device)
    with torch.no_grad():
        logits = model(image, sparse)
    return cropped_flows(logits, image.shape[-2:], inputs["size"], flow_range)[0]


class Tally:
    """Sums of per-pixel errors of every method over the regions of one guidance setting."""

    def __init__(self) -> None:
        self.sums = {r: dict.fromkeys(METHODS, 0.0) for r in REGIONS}
        self.pixels = dict.fromkeys(REGIONS, 0)
        self.guides = self.samples = 0
        self.with_objects = False

    def add(self, errors: dict[str, np.ndarray], regions: dict[str, np.ndarray], guides: int):
        for region, mask in regions.items():
            self.pixels[region] += int(mask.sum())
            for name, error in errors.items():
                self.sums[region][name] += float(error[mask].sum())
        self.with_objects |= "epe_other" in regions
        self.guides += guides
        self.samples += 1

    def result(self) -> dict[str, Any]:
        def mean(region: str, name: str) -> float | None:
            if region == "epe_other" and not self.with_objects:
                return None  # no object ids: the figure does not exist
            count = self.pixels[region]
            return self.sums[region][name] / count if count else float("nan")

        return {
            "guides_per_frame": self.guides / self.samples if self.samples else float("nan"),
            "num_samples": self.samples,
            "num_pixels": {r: self.pixels[r] for r in REGIONS},
            "methods": {m: {r: mean(r, m) for r in REGIONS} for m in METHODS},
        }


def reference_of(sample: StoredSample) -> tuple[StoredSample, np.ndarray | None, float | None]:
    """The sample to score against (its exact flow and visibility when it has them, else
    itself), its object ids (``None`` without) and the stored flow's summed end-point error
    against the exact flow over the visible pixels (``None`` without)."""
    truth = read_truth(sample.extras, sample.flow.shape[:2])
    if truth is None:
        return sample, None, None
    stored_error = float(np.linalg.norm(sample.flow - truth.flow, axis=-1)[truth.valid].sum())
    return replace(sample, flow=truth.flow, valid=truth.valid), truth.objects, stored_error


def draw_guidance(
    setting: str, sample: StoredSample, objects: np.ndarray | None, seed: int
) -> Guidance | None:
    """The guidance of a non-paper ``setting`` on ``sample`` (module docstring); ``None`` for
    ``per_object`` on a sample without object ids."""
    rng = sample_rng(seed, f"{sample.sample_id}#guides={setting}")
    valid = valid_mask(sample)
    if setting == PER_OBJECT:
        return None if objects is None else object_guidance(sample.flow, valid, objects, rng)
    return random_guidance(sample.flow, valid, int(setting), rng)


def evaluate(
    data_dirs: str | Path | Sequence[str | Path],
    checkpoint: str | Path,
    split: str = "val",
    max_samples: int | None = None,
    guidance_seed: int = 0,
) -> dict[str, Any]:
    """Mean end-point errors (px) of the model and the baselines on ``split`` for every
    guidance setting (module docstring).

    Returns ``{"methods": {name: {"epe", "epe_far", "epe_other"}}`` (the ``paper`` setting),
    ``"curve": {setting: {"guides_per_frame", "num_samples", "num_pixels", "methods"}}``,
    ``"reference"`` (how many samples were scored against exact and against stored flow),
    ``"stored_flow_epe"`` (the stored flow against the exact one; ``None`` without exact
    flow), ``"num_samples", "num_pixels", "num_far_pixels", "far_distance_px", "split",
    "checkpoint", "step", "guidance"}``. ``epe_far`` and ``epe_other`` are NaN where no pixel
    qualifies; ``epe_other`` is ``None`` and ``per_object`` absent without object ids. Raises
    :class:`~cmpdata.errors.CmpDataError` for missing data or a bad checkpoint, and
    ``ValueError`` for an empty split or a bad ``max_samples``.
    """
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be None or >= 1, got {max_samples}")
    model, ckpt = load_model(checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    flow_range = ckpt["model_config"]["flow_range"]
    transform = ckpt.get("transform_config", {})
    guidance_config = GuidanceConfig(**transform["guidance"]) if "guidance" in transform else None
    shape = {
        **{k: transform[k] for k in ("mean", "std") if k in transform},
        "multiple": model.stride,
        "min_side": model.min_side,
    }
    dataset = ShardDataset(data_dirs, split=split)
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if count == 0:
        names = [data_dirs] if isinstance(data_dirs, str | Path) else data_dirs
        raise UsageError(f"{', '.join(map(str, names))}: no {split} samples to evaluate")
    tallies = {s: Tally() for s in SETTINGS}
    exact = 0
    stored_sum = stored_pixels = 0.0
    for index in tqdm(range(count), desc="eval", unit="sample", leave=False):
        reference, objects, stored_error = reference_of(dataset[index])
        if stored_error is not None:
            exact += 1
            stored_sum += stored_error
            stored_pixels += int(reference.valid.sum())
        for setting in SETTINGS:
            if setting == PAPER:
                inputs = eval_inputs(reference, guidance_config, guidance_seed, **shape)
            else:
                guidance = draw_guidance(setting, reference, objects, guidance_seed)
                if guidance is None:
                    continue
                inputs = eval_inputs(reference, None, guidance_seed, guidance=guidance, **shape)
            prediction = model_flow(model, inputs, flow_range, device)
            score_sample(tallies[setting], inputs, objects, prediction)
    curve = {s: t.result() for s, t in tallies.items() if t.samples}
    paper = curve[PAPER]
    return {
        "methods": paper["methods"],
        "curve": curve,
        "reference": {"exact": exact, "stored": count - exact},
        "stored_flow_epe": stored_sum / stored_pixels if stored_pixels else None,
        "num_samples": count,
        "num_pixels": paper["num_pixels"]["epe"],
        "num_far_pixels": paper["num_pixels"]["epe_far"],
        "far_distance_px": FAR_DISTANCE,
        "split": split,
        "checkpoint": str(checkpoint),
        "step": ckpt["step"],
        "guidance": transform.get("guidance"),
    }


def score_sample(
    tally: Tally, inputs: dict[str, Any], objects: np.ndarray | None, prediction: np.ndarray
) -> None:
    """Add one :func:`eval_inputs` item's errors to ``tally``: the model's ``prediction``
    (float32 (H, W, 2) px, unpadded) and the baselines' on its guidance; ``objects`` (int
    (H, W) ids, or ``None``) gives the other-object pixels."""
    h, w = inputs["size"]
    sparse = inputs["sparse"].numpy()[:, :h, :w]
    nearest, distance = nearest_flow(sparse)
    flows = {
        "model": prediction,
        "zero": np.zeros((h, w, 2), np.float32),
        "nearest": nearest,
        "idw": idw_flow(sparse),
    }
    truth = inputs["flow"].numpy()[:, :h, :w].transpose(1, 2, 0)
    valid = inputs["valid"].numpy()[:h, :w]
    regions = {"epe": valid, "epe_far": valid & (distance > FAR_DISTANCE)}
    if objects is not None:
        regions["epe_other"] = valid & other_object_pixels(sparse, objects)
    errors = {
        name: np.hypot(*(flow - truth).transpose(2, 0, 1).astype(np.float64))
        for name, flow in flows.items()
    }
    tally.add(errors, regions, int((sparse[2] > 0).sum()))


def _label(setting: str, scores: dict[str, Any]) -> str:
    names = {PAPER: "paper sampler", PER_OBJECT: "one per object"}
    return f"{names.get(setting, setting)} ({scores['guides_per_frame']:.1f})"


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate` as aligned text tables: the paper sampler's EPE and
    far-from-guidance EPE by method, then the EPE against the number of guides, and at the
    pixels whose nearest guide is on another object."""
    reference = result["reference"]
    far = f"EPE > {result['far_distance_px']:g} px from guidance"
    lines = [
        f"{result['num_samples']} {result['split']} samples, {result['num_pixels']} valid "
        f"pixels ({result['num_far_pixels']} far from guidance); checkpoint step {result['step']}",
        f"reference: exact flow for {reference['exact']} samples, stored flow for "
        f"{reference['stored']}"
        + (
            f"; the stored flow's own EPE against the exact one {result['stored_flow_epe']:.3f} px"
            if result["stored_flow_epe"] is not None
            else ""
        ),
        f"{'method':<10} {'EPE (px)':>10} {far:>32}",
    ]
    for name, scores in result["methods"].items():
        lines.append(f"{name:<10} {scores['epe']:>10.3f} {scores['epe_far']:>32.3f}")
    curve = result["curve"]
    for region, title in (
        ("epe", "EPE (px) by guidance (guides a frame)"),
        ("epe_other", "EPE (px) where the nearest guide is on another object"),
    ):
        if region == "epe_other" and curve[PAPER]["methods"]["model"][region] is None:
            lines.append(f"{title}: absent (no object ids: real footage)")
            continue
        lines.append(f"{title:<32}" + "".join(f"{m:>9}" for m in METHODS))
        for setting, scores in curve.items():
            values = "".join(f"{scores['methods'][m][region]:>9.3f}" for m in METHODS)
            lines.append(f"{_label(setting, scores):<32}{values}")
    return "\n".join(lines)


def plot_curve(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """A PNG of :func:`evaluate`'s curve: EPE against guides a frame (log scale), one line
    per method over the random counts, the paper sampler and one-per-object as markers; a
    second panel for the other-object pixels when the data have object ids."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curve = result["curve"]
    regions = [("epe", "all valid pixels")]
    if curve[PAPER]["methods"]["model"]["epe_other"] is not None:
        regions.append(("epe_other", "pixels whose nearest guide is on another object"))
    counts = [str(k) for k in GUIDE_COUNTS if str(k) in curve]
    figure, axes = plt.subplots(1, len(regions), figsize=(6.4 * len(regions), 4.6), squeeze=False)
    for axis, (region, subtitle) in zip(axes[0], regions, strict=True):
        for index, name in enumerate(METHODS):
            colour = f"C{index}"
            xs = [curve[s]["guides_per_frame"] for s in counts]
            ys = [curve[s]["methods"][name][region] for s in counts]
            axis.plot(xs, ys, "o-", color=colour, label=name)
            for setting, marker in ((PAPER, "*"), (PER_OBJECT, "s")):
                if setting in curve:
                    scores = curve[setting]
                    x, y = scores["guides_per_frame"], scores["methods"][name][region]
                    axis.plot([x], [y], marker, color=colour, markersize=11, mfc="none")
        axis.set_xscale("log", base=2)
        axis.set_xticks(GUIDE_COUNTS, [str(k) for k in GUIDE_COUNTS])
        axis.minorticks_off()
        axis.set_xlabel("guides a frame (random; * paper sampler, square one per object)")
        axis.set_ylabel("end-point error (px)")
        axis.set_title(subtitle)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    reference = result["reference"]
    what = (
        "exact flow"
        if reference["stored"] == 0
        else "stored flow"
        if not reference["exact"]
        else "exact/stored flow"
    )
    figure.suptitle(
        f"{title + chr(10) if title else ''}{result['num_samples']} {result['split']} samples, "
        f"reference {what}, checkpoint step {result['step']}",
        fontsize=11,
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
