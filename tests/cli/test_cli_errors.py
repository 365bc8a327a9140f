"""What every command does with errors that are no one flag's: memory that runs out is a line naming what to
ask less of, not a traceback; a seed torch cannot take is refused by the flag."""
import pytest

import mcvd.cli.convert_official as command
from mcvd.cli import main


@pytest.mark.parametrize("raised", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 6144000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_running_out_of_memory_is_a_line(raised, monkeypatch, capsys):
    def run(args):
        raise raised

    monkeypatch.setattr(command, "run", run)
    assert main(["convert-official", "ckpt.pt", "--out", "model.pt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mcvd convert-official: error: out of memory (") and "Traceback" not in err
    assert "ask for less at once: fewer clips, samples or frames per call (--batch-size" in err


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch):
    def run(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(command, "run", run)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["convert-official", "ckpt.pt", "--out", "model.pt"])


@pytest.mark.parametrize("name", ["sample", "eval", "stream", "demo"])
def test_a_seed_beyond_torchs_range_is_refused_by_the_flag(name, capsys):
    assert main([name, "--seed", str(2**64)]) == 2
    assert f"mcvd {name}: error: argument --seed: expected an integer from 0 to 2**63 - 1, got {2**64}" in \
        capsys.readouterr().err
