"""The core install (torch, numpy, pyyaml, tqdm): `import mcvd` works without the extras, and each command
that needs one names what to install before it starts its work (exit code 1), instead of failing after it
at the file it writes. Each case runs in a fresh interpreter with Pillow, PyAV and matplotlib hidden."""
import subprocess
import sys
import textwrap

import pytest

HIDE = "import sys\nfor name in ('PIL', 'av', 'matplotlib'):\n    sys.modules[name] = None\n"


def run_hidden(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, check=False)


def test_import_needs_no_extras():
    done = run_hidden("""
        import mcvd, mcvd.cli, mcvd.data, mcvd.train, mcvd.metrics, mcvd.compat, mcvd.pretrained
        print('imported')
    """)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]


def test_reading_images_without_pillow_names_it(tmp_path):
    done = run_hidden("""
        from mcvd.data import StochasticMovingMNIST
        StochasticMovingMNIST(4, split='test', length=1)[0]
    """)
    assert done.returncode != 0 and "needs Pillow: pip install pillow" in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("argv, missing", [
    (["demo", "--out", "d"], "pillow and matplotlib"),
    (["sample", "--checkpoint", "x.pt", "--out", "o"], "pillow and av"),
    (["eval", "--checkpoint", "x.pt", "--data", "smmnist"], "pillow and matplotlib"),
    (["stream", "--checkpoint", "x.pt", "--input", "."], "pillow and av"),          # an MP4 by default
    (["stream", "--checkpoint", "x.pt", "--input", ".", "--out", "s.gif"], "pillow,"),  # frames to a GIF
], ids=["demo", "sample", "eval", "stream-mp4", "stream-gif"])
def test_a_command_names_the_packages_it_needs(argv, missing, tmp_path):
    done = subprocess.run([sys.executable, "-c", HIDE + f"from mcvd.cli import main\nsys.exit(main({argv!r}))"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    command = argv[0]
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"mcvd {command}: error: needs {missing}" in done.stderr, done.stderr
    assert "pip install" in done.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is written before the check"
