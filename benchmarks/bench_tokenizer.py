"""RankTokenizer throughput vs the plain per-spot loop of the same semantics, in one process.

Input: real her2st counts (several sections concatenated) when the data directory is present, else a
synthetic Visium-like matrix (5,000 spots over the 20,310-gene vocabulary, 2-5 k non-zero genes per spot).
Checks that both give identical tokens and prints spots/s and the ratio.

    python benchmarks/bench_tokenizer.py [--synthetic] [--spots 5000] [--loop-spots 2000] [--context 1500]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import scipy.sparse as sp


def her2st_vocab_counts(vocab, n_spots: int):
    import pandas as pd

    from stamp_st.paths import data_dir
    from stamp_st.preprocessing.vocab import SymbolMapper, map_genes

    root = data_dir(required=False)
    cnts = None if root is None else root / "her2st" / "ST-cnts"
    if cnts is None or not cnts.is_dir():
        return None, "her2st absent"
    mapper = SymbolMapper.default(vocab)
    parts, used, total = [], [], 0
    for f in sorted(cnts.glob("*.tsv.gz")):
        df = pd.read_csv(f, sep="\t", index_col=0)
        mapping = map_genes([str(s) for s in df.columns], vocab, mapper=mapper)
        parts.append(mapping.to_vocab_counts(sp.csr_matrix(df.to_numpy(np.float32))))
        used.append(f.name.split(".")[0])
        total += df.shape[0]
        if total >= n_spots:
            break
    X = sp.vstack(parts).tocsr()[:n_spots]
    return X, f"her2st sections {','.join(used)}"


def synthetic_vocab_counts(n_vocab: int, n_spots: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nnz = rng.integers(2000, 5001, size=n_spots)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    p = rng.dirichlet(np.full(n_vocab, 0.3))  # skewed gene popularity, like real tissue
    indices = np.concatenate([np.sort(rng.choice(n_vocab, size=k, replace=False, p=p)) for k in nnz])
    data = rng.geometric(0.4, size=len(indices)).astype(np.float32)  # small integer counts: many ties
    return sp.csr_matrix((data, indices, indptr), shape=(n_spots, n_vocab)), "synthetic Visium-like"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="do not use her2st even if present")
    ap.add_argument("--spots", type=int, default=5000)
    ap.add_argument("--loop-spots", type=int, default=2000, help="spots timed in the per-spot loop")
    ap.add_argument("--context", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from stamp_st.preprocessing.tokenizer import RankTokenizer, tokenize_spot_reference
    from stamp_st.preprocessing.vocab import GeneVocabulary

    try:
        vocab = GeneVocabulary.default()
    except Exception as err:  # noqa: BLE001
        print(f"released vocabulary unavailable ({err}); set STAMP_ST_DATA", file=sys.stderr)
        return 2
    X, source = (None, "") if args.synthetic else her2st_vocab_counts(vocab, args.spots)
    if X is None:
        X, source = synthetic_vocab_counts(len(vocab), args.spots)
    nnz = np.diff(X.indptr)
    print(f"input: {source}: {X.shape[0]} spots x {X.shape[1]} vocabulary genes, non-zero genes/spot "
          f"median {int(np.median(nnz))} (min {nnz.min()}, max {nnz.max()}), context {args.context}")

    tok = RankTokenizer(vocab, context=args.context)
    tok.tokenize_vocab_counts(X[:10])  # warm-up
    best = np.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = tok.tokenize_vocab_counts(X)
        best = min(best, time.perf_counter() - t0)
    vec_rate = X.shape[0] / best

    n_loop = min(args.loop_spots, X.shape[0])
    t0 = time.perf_counter()
    ref = np.stack([tokenize_spot_reference(X[i].toarray().ravel(), tok.divisors, args.context, tok.target_sum)
                    for i in range(n_loop)])
    loop_s = time.perf_counter() - t0
    loop_rate = n_loop / loop_s

    equal = np.array_equal(out.tokens[:n_loop], ref)
    print(f"RankTokenizer:              {vec_rate:12,.0f} spots/s  ({best:.3f} s for {X.shape[0]} spots, best of "
          f"{args.repeats})")
    print(f"per-spot reference loop:    {loop_rate:12,.0f} spots/s  ({loop_s:.3f} s for {n_loop} spots)")
    print(f"speed-up: {vec_rate / loop_rate:.1f}x   outputs identical on {n_loop} spots: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
