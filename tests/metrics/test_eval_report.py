"""metrics.md and metrics.json of an evaluation: best of k beside one sample
(the mean over the k), a single column when k = 1, FVD in its own table."""
import json

import pytest

from mcvd.metrics.report import markdown, write_report


def summary(mean, std, conf95):
    return {"mean": mean, "std": std, "conf95": conf95}


def result_of(best_psnr, one_psnr):
    per_frame = {"mean": [20.0, 18.0], "conf95": [0.5, 0.6]}
    scored = {
        "metrics": {"psnr": best_psnr, "ssim": summary(0.81234, 0.05, 0.01), "lpips": summary(0.1, 0.02, 0.004)},
        "per_frame": {"psnr": per_frame, "ssim": per_frame, "lpips": per_frame},
        "per_clip": {"psnr": [1.0, 2.0, 3.0], "ssim": [1.0, 2.0, 3.0], "lpips": [1.0, 2.0, 3.0]},
    }
    one = {**scored, "metrics": {"psnr": one_psnr, "ssim": summary(0.71234, 0.06, 0.02),
                                 "lpips": summary(0.2, 0.03, 0.005)}}
    return {**scored, "one_sample": one, "notes": []}


def test_best_of_k_and_one_sample_side_by_side(tmp_path):
    run = {"checkpoint": "c.pt", "samples": 5, "num_clips": 3}
    result = result_of(summary(21.456, 1.5, 0.41), summary(19.0, 1.25, 0.375))
    result["metrics"].update({"fvd": 123.45, "fvd_traj_mean": 130.0, "fvd_traj_std": 4.0, "fvd_traj_conf95": 3.5})
    page = markdown(run, result)
    assert "Mean over the 3 clips ± 95% interval (std over clips)." in page
    assert "| metric | best of 5 per clip | one sample (mean over the 5) |" in page
    assert "| PSNR (dB) ↑ | 21.46 ± 0.41 (std 1.50) | 19.00 ± 0.38 (std 1.25) |" in page
    assert "| SSIM ↑ | 0.8123 ± 0.0100 (std 0.0500) | 0.7123 ± 0.0200 (std 0.0600) |" in page
    assert "| LPIPS ↓ | 0.1000 ± 0.0040 (std 0.0200) | 0.2000 ± 0.0050 (std 0.0300) |" in page
    assert "| all 5 samples per clip | 123.5 | - | - |" in page
    assert "| per trajectory (mean of 5) | 130.0 | 4.0 | 3.5 |" in page

    written = write_report(tmp_path, run, result)
    assert [p.name for p in written] == ["metrics.json", "metrics.md", "per_frame.png"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["one_sample"]["metrics"]["psnr"] == summary(19.0, 1.25, 0.375)
    assert saved["metrics"]["psnr"]["mean"] == 21.456 and saved["run"] == run
    assert (tmp_path / "metrics.md").read_text() == page


def test_one_sample_per_clip_is_a_single_column():
    same = summary(20.0, 1.0, None)  # a single clip has no interval
    page = markdown({"samples": 1}, {**result_of(same, same), "per_clip": {"psnr": [20.0]}})
    assert "| metric | 1 sample per clip (best of 1 = one sample) |\n|---|---|\n" in page
    assert "| PSNR (dB) ↑ | 20.00 (std 1.00) |\n" in page
    assert "one sample (mean" not in page and "best of 1 per clip" not in page


def test_generation_has_the_fvd_table_only():
    result = {"metrics": {"fvd": 50.0}, "per_frame": {}, "per_clip": {}, "one_sample": {},
              "notes": ["FVD only"]}
    page = markdown({"samples": 2}, result)
    assert "| all 2 samples per clip | 50.0 | - | - |" in page and "Note: FVD only" in page
    assert "PSNR" not in page and "one sample" not in page


@pytest.mark.parametrize("samples", [1, 3])
def test_the_plot_has_a_curve_per_entry(samples):
    from mcvd.metrics.report import plot_per_frame

    fig = plot_per_frame(result_of(summary(1, 1, 1), summary(1, 1, 1)), first_frame=4, samples=samples)
    try:
        ax = fig.axes[0]
        assert [line.get_xdata().tolist() for line in ax.lines] == [[4, 5]] * (2 if samples > 1 else 1)
        assert (ax.get_legend() is not None) == (samples > 1)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_metrics_json_is_standard_json(tmp_path):
    """A non-finite figure would make metrics.json unreadable by strict JSON readers: refused, nothing written."""
    result = result_of(summary(float("nan"), 1.0, 0.5), summary(19.0, 1.25, 0.375))
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_report(tmp_path / "out", {"samples": 5}, result)
    assert not (tmp_path / "out" / "metrics.json").exists()
