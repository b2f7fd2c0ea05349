"""Synthetic CLIP-like vectors for index benchmarks: many clusters on a low-dimensional subspace,
plus a little isotropic noise, L2-normalised; and held-out queries from the same distribution.

Random isotropic vectors are the worst case for approximate search (their true neighbours are
barely closer than any other point); real CLIP embeddings are clustered with a low intrinsic
dimension, which is what this mimics. `random_vectors` is kept to report the worst case.
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_vectors(n: int, dim: int = 512, clusters: int = 10_000, latent_dim: int = 48,
                      spread: float = 0.6, noise: float = 0.25, cone: float = 0.6,
                      seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """`n` normalised vectors: cluster centres in a `latent_dim` subspace, points scattered around
    them (`spread`, relative to the centres' scale), mapped to `dim` and jittered by isotropic
    `noise` (relative norm), and shifted along one shared direction (`cone`: CLIP embeddings
    share a mean direction, pairwise cosines are mostly positive). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
    centres = rng.standard_normal((clusters, latent_dim)).astype(np.float32)
    shared = rng.standard_normal(latent_dim).astype(np.float32)
    centres += cone * shared
    # Zipf-like cluster sizes: a few big topics, a long tail (as in web image data)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.choice(clusters, size=m, p=weights)
        latent = centres[which] + spread * rng.standard_normal((m, latent_dim), dtype=np.float32)
        x = latent @ basis
        scale = np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(dim)
        x += noise * scale * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = _normalise(x)
    return out


def clustered_dataset(n: int, queries: int, dim: int = 512, seed: int = 0,
                      **kwargs: float) -> tuple[np.ndarray, np.ndarray]:
    """(database, held-out queries): drawn from one distribution, so no query is in the index."""
    both = clustered_vectors(n + queries, dim=dim, seed=seed, **kwargs)  # type: ignore[arg-type]
    return both[:n], np.ascontiguousarray(both[n:])


def random_vectors(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """Isotropic random unit vectors: the worst case for approximate nearest-neighbour search."""
    rng = np.random.default_rng(seed)
    return _normalise(rng.standard_normal((n, dim), dtype=np.float32))


# Wide, overlapping clusters: fewer, broader topics whose members spread well past the distance
# between neighbouring centres, so a query's true neighbours fall into many inverted lists and
# the coarse quantizer, not the codes, limits recall (the hard case for IVF first stages).
WIDE = {"clusters": 1_000, "spread": 1.4, "latent_dim": 64, "noise": 0.3}


def wide_dataset(n: int, queries: int, dim: int = 512, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(database, held-out queries) from the wide, overlapping-cluster distribution (`WIDE`)."""
    return clustered_dataset(n, queries, dim, seed, **WIDE)
