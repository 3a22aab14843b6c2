"""Corpus build throughput on her2st at 1 and 2 Dask workers: spots/s (gene corpus) and patches/s (paired
corpus, sections with an H&E image). Workers are started and warmed (imports done) before the clock starts,
so the figures are steady-state per-slide work: read, QC, tokenize, group or crop, encode, write shards.
``spots_per_cpu_s`` divides by the workers' CPU seconds: the per-core rate, steadier on a shared machine.

    python benchmarks/bench_corpus.py [--sections A1,A2,...] [--workers 1,2] [--kinds genes,paired]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path


def _cpu_s() -> float:
    """This worker process's CPU seconds (its threads included): per-core throughput on a loaded machine."""
    return time.process_time()


def _warm():
    import stamp_st.corpus.build  # noqa: F401
    import stamp_st.preprocessing.crops  # noqa: F401
    import stamp_st.readers  # noqa: F401
    import stamp_st.readers.slide  # noqa: F401

    return True


def main(argv=None) -> int:
    from distributed import Client, LocalCluster

    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.samples import her2st_samples
    from stamp_st.paths import her2st_dir, vocab_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="A1,A2,A3,B1,B2,B3,C1,D1", help="gene-corpus sections")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--kinds", default="genes,paired,paired-qoi", help="genes, paired (PNG), paired-qoi")
    ap.add_argument("--json", help="write the results here")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    root = her2st_dir()
    rows = []
    for label in args.kinds.split(","):
        kind, _, codec = label.partition("-")
        entries = (her2st_samples(root, sections=args.sections.split(",")) if kind == "genes"
                   else her2st_samples(root, with_image_only=True))
        for w in map(int, args.workers.split(",")):
            cluster = LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
            client.run(_warm)
            with tempfile.TemporaryDirectory() as out:
                cfg = BuildConfig(kind=kind, vocab_path=str(vocab_file()), image_codec=codec or "png")
                cpu0 = client.run(_cpu_s)
                t0 = time.perf_counter()
                res = build_corpus(entries, Path(out), cfg, client=client, progress=False)
                wall = time.perf_counter() - t0
                cpu_s = sum(client.run(_cpu_s).values()) - sum(cpu0.values())
            client.close()
            cluster.close()
            b = res["build"]
            rows.append({"kind": label, "workers": w, "slides": len(entries), "spots": b["n_spots_built"],
                         "patches": b["n_patches_built"], "build_s": round(b["seconds"], 2),
                         "wall_s_with_manifest": round(wall, 2), "spots_per_s": round(b["spots_per_s"], 1),
                         "patches_per_s": round(b["patches_per_s"], 1), "workers_cpu_s": round(cpu_s, 2),
                         "spots_per_cpu_s": round(b["n_spots_built"] / max(cpu_s, 1e-9), 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'kind':<11}{'workers':>8}{'slides':>8}{'spots':>8}{'seconds':>9}{'spots/s':>10}{'patches/s':>11}")
    for r in rows:
        print(f"{r['kind']:<11}{r['workers']:>8}{r['slides']:>8}{r['spots']:>8}{r['build_s']:>9}"
              f"{r['spots_per_s']:>10}{r['patches_per_s']:>11}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python benchmarks/bench_corpus.py " + " ".join(argv or []),
                                               "machine": "2 cores shared with other jobs (loaded)",
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
