"""Writing an evaluation's results: metrics.json, metrics.md and per_frame.png.

Every file is written to a temporary file beside its target and renamed
(mcvd.fileio.atomic_write), and existing results are only replaced
when asked to.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from mcvd.fileio import atomic_write

FILES = ("metrics.json", "metrics.md", "per_frame.png")
LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}


def existing_results(out: str | os.PathLike) -> list[Path]:
    """The result files already in `out`."""
    return [Path(out) / name for name in FILES if (Path(out) / name).exists()]


def _fmt(x, digits: int) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if math.isfinite(x) else str(x)


def _cell(m: dict, digits: int) -> str:
    """A summary (mcvd.metrics.stats.summary) as 'mean ± conf95 (std s)'."""
    mean = _fmt(m["mean"], digits)
    half = "" if m["conf95"] is None else f" ± {_fmt(m['conf95'], digits)}"
    return f"{mean}{half} (std {_fmt(m['std'], digits)})"


def markdown(run: dict, result: dict) -> str:
    """The results as a Markdown page: the run's settings; a table of PSNR,
    SSIM and LPIPS with a column for best of k and one for one sample (the
    mean over the k; a single column when k = 1, where both are the same);
    a table of FVD."""
    k = run["samples"]
    lines = ["# MCVD evaluation", ""]
    lines += [f"- {key}: {value}" for key, value in run.items()]
    metrics, single = result["metrics"], result.get("one_sample", {}).get("metrics", {})
    scored = [name for name in LABELS if name in metrics]
    if scored:
        clips = len(result["per_clip"][scored[0]])
        lines += ["", f"Mean over the {clips} clips ± 95% interval (std over clips). As in the reference code, "
                      "the interval is 1.96 s / sqrt(n) (s with ddof 1, the std shown with ddof 0): a normal "
                      "approximation, too narrow for a few clips.", ""]
        if k == 1:
            lines += ["| metric | 1 sample per clip (best of 1 = one sample) |", "|---|---|"]
        else:
            lines += [f"| metric | best of {k} per clip | one sample (mean over the {k}) |", "|---|---|---|"]
        for name in scored:
            digits = 2 if name == "psnr" else 4
            cells = [_cell(metrics[name], digits)]
            if k > 1:
                cells.append(_cell(single[name], digits) if name in single else "-")
            lines.append(f"| {LABELS[name]} | {' | '.join(cells)} |")
    if "fvd" in metrics:
        lines += ["", "| FVD ↓ | value | std | 95% interval (±) |", "|---|---|---|---|",
                  f"| all {k} samples per clip | {_fmt(metrics['fvd'], 1)} | - | - |"]
        if "fvd_traj_mean" in metrics:
            lines.append(f"| per trajectory (mean of {k}) | {_fmt(metrics['fvd_traj_mean'], 1)} "
                         f"| {_fmt(metrics['fvd_traj_std'], 1)} | {_fmt(metrics['fvd_traj_conf95'], 1)} |")
    lines += [""] + [f"Note: {note}" for note in result["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def plot_per_frame(result: dict, first_frame: int, samples: int = 1):
    """A matplotlib figure of the per-frame curves (mean over clips, 95% band) of
    best of `samples` and, when samples > 1, of one sample; frames numbered from first_frame."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the per-frame plot needs matplotlib: pip install matplotlib") from e
    curves = result["per_frame"]
    single = result.get("one_sample", {}).get("per_frame", {}) if samples > 1 else {}
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        lines = [(c, f"best of {samples}", "o")]
        if name in single:
            lines.append((single[name], f"one sample (mean over the {samples})", "s"))
        for curve, label, marker in lines:
            x = list(range(first_frame, first_frame + len(curve["mean"])))
            ax.plot(x, curve["mean"], marker=marker, markersize=3, label=label)
            if all(h is not None for h in curve["conf95"]):
                ax.fill_between(x, [m - h for m, h in zip(curve["mean"], curve["conf95"])],
                                [m + h for m, h in zip(curve["mean"], curve["conf95"])], alpha=0.25)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.set_xlabel("frame")
        ax.set_title(LABELS[name])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_report(out: str | os.PathLike, run: dict, result: dict, *, first_frame: int = 1,
                 overwrite: bool = False) -> list[Path]:
    """Write metrics.json ({"run": run, **result}), metrics.md and, when there
    are per-frame curves, per_frame.png into `out` (created if needed).
    Raises FileExistsError naming the files if any exists and overwrite is False.
    Returns the paths written."""
    out = Path(out)
    existing = existing_results(out)
    if existing and not overwrite:
        raise FileExistsError(f"out: {', '.join(map(str, existing))} exist(s); choose another folder or pass "
                              f"--overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    text = json.dumps({"run": run, **result}, indent=2, allow_nan=False) + "\n"  # standard JSON: no NaN
    atomic_write(out / "metrics.json", lambda fh: fh.write(text.encode()))
    page = markdown(run, result)
    atomic_write(out / "metrics.md", lambda fh: fh.write(page.encode()))
    written += [out / "metrics.json", out / "metrics.md"]
    if result["per_frame"]:
        fig = plot_per_frame(result, first_frame, run["samples"])
        try:
            atomic_write(out / "per_frame.png", lambda fh: fig.savefig(fh, format="png", dpi=120))
        finally:
            import matplotlib.pyplot as plt
            plt.close(fig)
        written.append(out / "per_frame.png")
    return written
