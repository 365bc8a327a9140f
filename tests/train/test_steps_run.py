"""A run that a time limit ends records the steps it ran (train(time_limit_ends_run=True)); a paused one
keeps its step count, so that the same command resumes towards it."""
import pytest

from mcvd.train import read_checkpoint, train


@pytest.mark.parametrize("ends_run", [True, False], ids=["ends", "pauses"])
def test_the_checkpoint_records_the_steps_run(tiny_run, tmp_path, ends_run):
    run = tiny_run(training={"steps": 6, "ckpt_every": 4})
    result = train(run, tmp_path / "w", progress=False, time_limit=0, time_limit_ends_run=ends_run)
    assert result.step == 1
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt["step"] == 1 and ckpt["run_config"] == result.run.to_dict()
    if ends_run:
        assert (result.run.training.steps, result.run.training.ckpt_every) == (1, 1)
        assert result.run.model == run.model and result.run.data == run.data
        # Resuming it with its own run config trains no further.
        again = train(result.run, tmp_path / "w", progress=False)
        assert again.step == 1 and again.losses == []
    else:
        assert result.run == run


def test_a_run_the_time_limit_does_not_stop_keeps_its_config(tiny_run, tmp_path):
    run = tiny_run(training={"steps": 2})
    result = train(run, tmp_path / "w", progress=False, time_limit=1e9, time_limit_ends_run=True)
    assert result.step == 2 and result.run == run
    assert read_checkpoint(result.checkpoint)["run_config"] == run.to_dict()
