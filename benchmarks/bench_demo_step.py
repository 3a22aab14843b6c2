"""Seconds per Stage-1 optimizer step of a pretraining config (default ``demo_cpu``), as the engine runs it:
bf16 autocast where the CPU has native bf16 (``precision: auto``), forward + backward, gradient clipping,
the engine's AdamW, on synthetic full-length groups of 9 spots (an upper bound: real spots shorter than the
context are trimmed). Both phases are timed: IGR alone and IGR + CGR; wall and CPU seconds (the process's
CPU time is steadier than wall time on a busy machine; with ``--threads 1`` it is the work done).

    python benchmarks/bench_demo_step.py [--config demo_cpu] [--steps 7] [--threads 2]

To compare two versions of the code, run it with each one's ``src`` on ``PYTHONPATH``, alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo_cpu", help="pretraining config name or JSON file")
    ap.add_argument("--steps", type=int, default=7, help="timed steps per phase (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.training.engine import TrainerConfig, build_optimizer, resolve_precision
    from stamp_st.training.gene_objectives import GenePretrainModel
    from stamp_st.training.pretrain_genes import PretrainConfig

    torch.set_num_threads(args.threads)
    cfg = PretrainConfig.load(args.config)
    enc_cfg = cfg.encoder_config()
    tcfg = TrainerConfig.from_dict(cfg.trainer)
    dev = torch.device("cpu")
    amp = resolve_precision(tcfg.precision, dev)
    torch.manual_seed(0)
    model = GenePretrainModel(GeneEncoder(enc_cfg), mask_prob=cfg.mask_prob).train()
    opt = build_optimizer(model, tcfg, dev)
    g = torch.Generator().manual_seed(1)
    tokens = torch.stack([torch.stack([torch.randperm(enc_cfg.vocab_size, generator=g)[:enc_cfg.context] + 30
                                       for _ in range(9)]) for _ in range(cfg.batch_size)])
    batch = {"tokens": tokens, "spot_valid": torch.ones(cfg.batch_size, 9, dtype=torch.bool)}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            loss = model(batch)["loss"]
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    res = {"config": args.config, "model": enc_cfg.name, "groups": cfg.batch_size, "context": enc_cfg.context,
           "bf16": amp is not None, "threads": args.threads}
    for phase, cgr in (("igr", False), ("igr_cgr", True)):
        model.cgr = cgr
        for _ in range(args.warmup):
            step()
        ts, cpu = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            ts.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        res[f"{phase}_s_per_step"] = statistics.median(ts)
        res[f"{phase}_cpu_s_per_step"] = statistics.median(cpu)  # steadier than wall time on a shared machine
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
