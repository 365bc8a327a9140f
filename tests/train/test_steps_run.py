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


def test_a_time_limit_function_is_asked_after_every_step_with_the_steps_and_seconds(tiny_run, tmp_path):
    """A limit that depends on the measured speed: asked after each step but the last with the steps this
    call has run and their seconds; here it is spent once three steps are done."""
    asked = []

    def limit(steps_done, seconds):
        asked.append((steps_done, seconds))
        return 0.0 if steps_done >= 3 else 1e9

    result = train(tiny_run(training={"steps": 6}), tmp_path / "w", progress=False, time_limit=limit,
                   time_limit_ends_run=True)
    assert result.step == 3 and result.run.training.steps == 3
    assert [n for n, _ in asked] == [1, 2, 3]
    assert all(s > 0 for _, s in asked) and [s for _, s in asked] == sorted(s for _, s in asked)
