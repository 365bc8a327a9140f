"""The report of `mcvd demo`: metrics.png, report.md and metrics.json.

Inputs: `info` (the run's facts: verdict, expectation, device, threads,
parameters, training, evaluation, run_config, out, command, optionally
shipped: the shipped model scored beside, digits: the digit recall per
predicted frame of the truth, the models and the baselines, and stream: the
streamed clip's StreamRun.summary() with method, steps and the model
streamed), each model's
comparison with copy-last-frame (mcvd.metrics.baselines.compare, by the
model's name in the scores), the frame numbers and the scores of the models
and the baselines (mcvd.metrics.baselines). Every file is written atomically
(mcvd.fileio.atomic_write).
"""
from __future__ import annotations

import json
from pathlib import Path

from mcvd.fileio import atomic_write
from mcvd.metrics.stats import summary

FILES = ("metrics.png", "report.md", "metrics.json")


def fmt_summary(s: dict, digits: int) -> str:
    """`mean ± 95% half-width` of a mcvd.metrics.stats.summary, the half-width left out when there is none."""
    half = s["conf95"]
    return f"{s['mean']:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def plot(path: Path, frames: list[int], scores: dict[str, dict], log: list[dict], pixels: int,
         recall: dict[str, list[float]] | None = None) -> None:
    """metrics.png: PSNR and SSIM per frame of the model and the baselines, the digit recall per frame
    (when the run measured it: `recall`, by name) and the training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if recall else 3, figsize=(17 if recall else 13, 3.6))
    styles = {"copy last frame": {"marker": "s", "linestyle": "--", "color": "C2"},
              "empty frame": {"marker": "^", "linestyle": ":", "color": "grey"},
              "truth": {"marker": "*", "linestyle": "-.", "color": "black"}}
    panels = [(axes[0], "PSNR (dB) ↑", {name: s["psnr_per_frame"] for name, s in scores.items()}),
              (axes[1], "SSIM ↑", {name: s["ssim_per_frame"] for name, s in scores.items()})]
    if recall:
        panels.append((axes[2], "digit recall ↑", recall))
    # One colour per model in every panel, whatever order each panel lists them in.
    models = [name for name in dict.fromkeys([*scores, *(recall or {})]) if name not in styles]
    palette = [f"C{i}" for i in range(10) if i not in (2, 7)]  # C2: copy-last-frame; C7 is grey, like the empty frame
    styles |= {name: {"marker": "o", "color": palette[i % len(palette)]} for i, name in enumerate(models)}
    for ax, label, curves in panels:
        for name, values in curves.items():
            ax.plot(frames, values, label=name, **styles[name])
        ax.set_xlabel("frame (after the past frames)")
        ax.set_title(f"{label}, held-out clips")
        ax.set_xticks(frames)
        ax.grid(alpha=0.3)
        ax.legend()
    if recall:
        axes[2].set_ylim(0, 1.02)  # a share of the clip's digits
    # The objective sums 1/2 (target - prediction)^2 over pixels (weighted with min-SNR): 2 * loss / pixels
    # is the per-pixel (weighted) MSE, 1 for an eps network that predicts zero noise.
    loss = axes[-1]
    loss.plot([r["step"] for r in log], [2 * r["loss"] / pixels for r in log])
    loss.set_xlabel("training step")
    loss.set_title("training loss: MSE per pixel")
    loss.set_yscale("log")
    loss.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)


def markdown(info: dict, comparisons: dict[str, dict], frames: list[int], scores: dict[str, dict]) -> str:
    """report.md: the verdict, the figures, the scores and the run's settings."""
    tr, ev = info["training"], info["evaluation"]
    lines = [
        "# MCVD demo: video prediction on Stochastic Moving MNIST", "",
        info["verdict"], "", info["expectation"], "",
        "![condition | prediction | truth](demo.gif)" if "shipped" not in info else
        "![condition | prediction of the model trained here | of the shipped model | truth](demo.gif)", "",
        "![per-frame PSNR, SSIM and digit recall, training loss](metrics.png)", "",
        (f"## {ev['clips']} held-out clips (test digits): {ev['past_frames']} past frames -> "
         f"{ev['pred_frames']} predicted"), "",
        (f"One sample per clip ({ev['method']}, {ev['sample_steps']} steps per block of {ev['block_frames']} frames, "
         "block-autoregressive). Scores per clip (PSNR from the clip's MSE, SSIM the mean over frames; "
         "the paper's protocol), mean ± 95% interval over clips."), "",
        "| | PSNR (dB) ↑ | SSIM ↑ |", "|---|---|---|",
    ]
    for name, s in scores.items():
        lines.append(f"| {name} | {fmt_summary(summary(s['psnr_per_clip']), 2)} "
                     f"| {fmt_summary(summary(s['ssim_per_clip']), 4)} |")
    for name, comparison in comparisons.items():
        lines.append(f"| {name} - copy last frame (paired) | {fmt_summary(comparison['psnr']['difference'], 2)} "
                     f"| {fmt_summary(comparison['ssim']['difference'], 4)} |")
    lines += [
        "",
        "Per frame (mean over clips), PSNR (dB) / SSIM:", "",
        "| frame | " + " | ".join(scores) + " |", "|---" * (len(scores) + 1) + "|",
    ]
    for j, fr in enumerate(frames):
        cells = [f"{s['psnr_per_frame'][j]:.2f} / {s['ssim_per_frame'][j]:.3f}" for s in scores.values()]
        lines.append(f"| {fr} | " + " | ".join(cells) + " |")
    lines += digits_section(info, frames)
    lines += shipped_section(info)
    lines += stream_section(info)
    notes = []
    if tr["step_floor"] is not None:
        notes.append(f"at least the size's step floor of {tr['step_floor']} steps, as fewer fitted in the size's "
                     f"minutes")
    if tr["deadline_minutes"] is not None:
        notes.append(f"shortened so that the demo ends within {tr['deadline_minutes']:g} minutes of its start")
    if tr["budget_seconds"] is not None:
        notes.append(f"{'budget' if len(notes) == 0 else 'time limit'} {tr['budget_seconds']:.0f} s")
    budget = f" ({'; '.join(notes)})" if notes else ""
    lines += [
        "", "## Training", "",
        f"- device: {info['device']}, {info['threads']} torch CPU thread(s)",
        (f"- {tr['steps']} steps of batch {tr['batch_size']} ({tr['steps'] * tr['batch_size']} clips) in "
         f"{tr['seconds']:.0f} s{budget}"),
        (f"- loss (1/2 squared error of the prediction summed over pixels, batch mean): first logged "
         f"{tr['first_loss']:.4g}, last logged {tr['last_loss']:.4g}"),
        f"- model: {info['parameters']:,} parameters",
        f"- sampling and scoring: {ev['seconds']:.0f} s", "",
        "## Run config", "", "```json", json.dumps(info["run_config"], indent=2), "```", "",
        "## Reproduce", "", "```", info["command"],
        (f"mcvd sample --checkpoint {info['out']}/checkpoint.pt --data smmnist --index 0 1 2 "
         f"--frames {ev['pred_frames']} --method {ev['method']} --steps {ev['sample_steps']} "
         f"--out {info['out']}/sample"),
        "```", "",
    ]
    return "\n".join(lines)


def digits_section(info: dict, frames: list[int]) -> list[str]:
    """The lines of report.md on digit recall (mcvd.metrics.digits; none when the run measured none)."""
    recall = info.get("digits")
    if not recall:
        return []
    lines = [
        "", "## Are the digits still there?", "",
        ("PSNR and SSIM reward ink in the right places, whether or not it is the right digit. Digit recall "
         "(`mcvd.metrics.digits`): the share of a clip's digit classes among the two classes a classifier, "
         "trained on frames of the training digits, finds likeliest in a frame; mean over clips. The true "
         "frames show what overlapping digits leave visible, the empty frame the classifier's guess on "
         "nothing."), "",
        "| frame | " + " | ".join(recall) + " |", "|---" * (len(recall) + 1) + "|",
    ]
    for j, fr in enumerate(frames):
        lines.append(f"| {fr} | " + " | ".join(f"{r[j]:.2f}" for r in recall.values()) + " |")
    lines.append("| mean | " + " | ".join(f"{sum(r) / len(r):.2f}" for r in recall.values()) + " |")
    return lines


def shipped_section(info: dict) -> list[str]:
    """The lines of report.md on the shipped model scored beside (none when there was none)."""
    sh = info.get("shipped")
    if sh is None:
        return []
    guided = "no guidance" if sh["guidance"] is None else f"classifier-free guidance w = {sh['guidance']:g}"
    interval = sh.get("guidance_interval")
    if sh["guidance"] is not None and interval is not None:
        guided += f" at the steps with {interval[0]} <= t <= {interval[1]} (the others unguided)"
    return [
        "", "## The shipped model", "",
        (f"`{sh['name']}` (`mcvd.pretrained.load({sh['name']!r})`): a network of {sh['parameters'] / 1e6:.2f}M "
         f"parameters on this size's clips, frames and objective, trained for "
         f"{sh['steps']:,} steps with `mcvd train` by {' then '.join(f'`{c}`' for c in sh['configs'])} "
         f"(scripts/make_pretrained.sh), shipped in the "
         f"package, its SHA-256 checked at every load ({sh['sha256'][:16]}...). Scored on the same clips with the "
         f"same seed as the model trained here, sampled as measured best for it (docs/demo.md): "
         f"{sh['method']}, {sh['sample_steps']} steps per block, {guided}."),
    ]


def streamed_model(info: dict) -> tuple[str, str]:
    """Which model streamed the demo's clip, as words, and as the --checkpoint that streams with it."""
    if info["stream"].get("model") == "shipped":
        return "the shipped model", info["shipped"]["name"]
    return "the model trained here", f"{info['out']}/checkpoint.pt"


def stream_section(info: dict) -> list[str]:
    """The streamed clip's lines of report.md (none when the run streamed none)."""
    st = info.get("stream")
    if st is None:
        return []
    k, every = st["frames_per_prediction"], st["every"]
    who, checkpoint = streamed_model(info)
    return [
        "", "## Streaming", "",
        "![input | prediction, as the clip plays](stream.gif)", "",
        (f"A held-out clip of {st['frames_in']} frames pushed frame by frame through `mcvd.StreamingPredictor` "
         f"({who}, {st['method']}, {st['steps']} steps): after the first "
         f"{st['past_frames']} frames, a prediction of the next {k} frames every {every} frames, from the frames "
         f"before them; stream.gif shows at each time the "
         f"observed frame beside the prediction made for it. {st['predictions']} predictions on {info['device']} "
         f"({st.get('threads', info['threads'])} torch CPU thread(s)):"), "",
        ("| predicted frames / s | latency per prediction: median | p90 | max | per predicted frame (median / k) "
         "| first prediction |"),
        "|---|---|---|---|---|---|",
        (f"| {st['predicted_fps']:.1f} | {st['latency_median'] * 1000:.0f} ms | {st['latency_p90'] * 1000:.0f} ms "
         f"| {st['latency_max'] * 1000:.0f} ms | {st['latency_per_frame'] * 1000:.0f} ms "
         f"| {st['first_latency'] * 1000:.0f} ms (builds the sampler; left out of the rest) |"), "",
        ("Predicted frames per second: k frames per prediction over the mean latency, so a stall of the machine "
         "counts in full; the median shows the typical prediction."), "",
        (f"`mcvd stream --checkpoint {checkpoint} --input VIDEO` streams a video file or a folder of frames the "
         "same way."),
    ]


def write_demo_report(out: Path, info: dict, comparisons: dict[str, dict], frames: list[int],
                      scores: dict[str, dict], log: list[dict], pixels: int) -> list[Path]:
    """Write FILES into the folder `out`, replacing them; returns their paths.

    log: the training log's rows (mcvd.train.trainer.read_metrics); pixels: values
    per training clip's current frames, k * C * H * W (the loss is summed over them)."""
    # Standard JSON (no NaN or Infinity), checked before anything is written.
    text = json.dumps({**info, "comparisons": comparisons, "frames": frames, "scores": scores}, indent=2,
                      allow_nan=False) + "\n"
    plot(out / "metrics.png", frames, scores, log, pixels, info.get("digits"))
    page = markdown(info, comparisons, frames, scores)
    atomic_write(out / "report.md", lambda fh: fh.write(page.encode()))
    atomic_write(out / "metrics.json", lambda fh: fh.write(text.encode()))
    return [out / name for name in FILES]
