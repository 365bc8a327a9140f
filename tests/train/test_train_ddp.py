"""DDP on the CPU (gloo, 2 processes): identical weights on both ranks, the single-process run's losses."""
import os
import socket
import time

import torch
import torch.multiprocessing as mp

from mcvd.train import RunConfig, read_checkpoint, train

# Dropout 0: each process draws its own dropout masks, the only randomness not shared with one process.
RUN = {
    "model": dict(image_size=8, channels=1, num_frames=2, num_frames_cond=2, ngf=4, ch_mult=[1], num_res_blocks=1,
                  attn_resolutions=[], n_head_channels=-1, dropout=0.0),
    "data": {"digit_size": 4, "length": 64, "random_flip": True},
    "training": {"batch_size": 8, "steps": 3, "lr": 1e-3, "warmup": 2, "ckpt_every": 3, "log_every": 1,
                 "prob_mask_cond": 0.5},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, workdir: str, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # 2 micro-batches per process: the first backward runs under no_sync.
    run = RunConfig.from_dict({**RUN, "training": {**RUN["training"], "grad_accum": 2}})
    result = train(run, workdir, progress=False)
    torch.save({"losses": result.losses, "model": result.model.state_dict()}, os.path.join(out, f"rank{rank}.pt"))


def test_two_processes_match_one(tmp_path):
    single = train(RunConfig.from_dict(RUN), tmp_path / "single", progress=False)
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))

    assert r0["losses"] == r1["losses"]  # the all-reduced global loss
    for k in r0["model"]:
        torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=0, msg=k)
    # Same global batch, noise and masks as one process (without accumulation); only the summation order
    # differs, so float32 rounding bounds the difference.
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=0)
    ref = read_checkpoint(single.checkpoint)["model"]
    for k in ref:
        torch.testing.assert_close(r0["model"][k], ref[k], rtol=1e-4, atol=1e-6, msg=k)
    ckpt = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["per_rank"]) == 2 and ckpt["step"] == 3


def _rank_limited(rank: int, world: int, port: int, workdir: str, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # Only rank 1 is past its limit after the first step (clocks differ between processes): rank 0
    # must stop with it.
    result = train(RunConfig.from_dict(RUN), workdir, progress=False, time_limit=0 if rank == 1 else 1e9)
    torch.save({"step": result.step}, os.path.join(out, f"limited{rank}.pt"))


def test_a_time_limit_stops_every_process_at_the_same_step(tmp_path):
    ctx = mp.spawn(_rank_limited, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2,
                   join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("the processes did not stop together: one waits on a collective")
    assert [torch.load(tmp_path / f"limited{r}.pt")["step"] for r in range(2)] == [1, 1]
    assert read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["step"] == 1


def _rank_cli(rank: int, world: int, port: int, config: str, workdir: str, out: str, expected_code: int = 0):
    import contextlib

    from mcvd.cli import main

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with (open(os.path.join(out, f"stdout{rank}.txt"), "w") as fh, contextlib.redirect_stdout(fh),
          open(os.path.join(out, f"stderr{rank}.txt"), "w") as fe, contextlib.redirect_stderr(fe)):
        code = main(["train", "--config", config, "--workdir", workdir, "--no-progress"])
    assert code == expected_code


def test_only_rank_0_prints_the_final_line(tmp_path):
    import yaml

    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump({**RUN, "training": {**RUN["training"], "steps": 1, "ckpt_every": 1}}))
    mp.spawn(_rank_cli, args=(2, _free_port(), str(config), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2,
             join=True)
    assert (tmp_path / "stdout0.txt").read_text().startswith("mcvd train: step 1, checkpoint ")
    assert (tmp_path / "stdout1.txt").read_text() == ""


def test_a_divergence_is_reported_once_and_a_usage_error_by_each_process(tmp_path):
    import yaml

    # Adam moves every weight by about the learning rate: 1e30 overflows the next forward.
    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump({**RUN, "training": {**RUN["training"], "lr": 1e30, "warmup": 0}}))
    mp.spawn(_rank_cli, args=(2, _free_port(), str(config), str(tmp_path / "ddp"), str(tmp_path), 1), nprocs=2,
             join=True)
    assert "mcvd train: error: " in (tmp_path / "stderr0.txt").read_text()
    assert "training stopped before applying this step" in (tmp_path / "stderr0.txt").read_text()
    assert (tmp_path / "stderr1.txt").read_text() == ""

    (tmp_path / "taken").write_text("a user's file")  # --workdir names a file: refused by each process
    mp.spawn(_rank_cli, args=(2, _free_port(), str(config), str(tmp_path / "taken"), str(tmp_path), 2), nprocs=2,
             join=True)
    for rank in range(2):
        assert f"mcvd train: error: (process {rank} of 2) --workdir" in (tmp_path / f"stderr{rank}.txt").read_text()
    assert (tmp_path / "taken").read_text() == "a user's file"
