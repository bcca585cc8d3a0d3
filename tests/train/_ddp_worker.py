"""Run by test_engine.py in two processes (torch.multiprocessing.spawn): one DDP training."""

import json
import os

import torch.distributed as dist


def train_rank(rank, world_size, corpus_dir, out_file, port):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from tests.train.test_engine import build, config_for

        model, batches = build(corpus_dir, batch_size=4 // world_size, rank=rank,
                               world_size=world_size)
        from cerebrum.train.engine import Trainer
        from cerebrum.train.lm import next_token_loss

        curves = Trainer(model, next_token_loss, batches, config_for(6),
                         verbose=False).run()["train"]
        if rank == 0:
            with open(out_file, "w") as out:
                json.dump(curves["loss"], out)
    finally:
        dist.destroy_process_group()
