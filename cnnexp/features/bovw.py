"""Bag of visual words over ORB descriptors: the hand-crafted baseline the CNNs are compared to."""

from __future__ import annotations

import time

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cnnexp.features.orb import Described, OrbSettings, detect_and_describe


class BovwClassifier:
    """ORB descriptors → k-means visual words → word histogram per image → logistic regression.

    k-means runs on the binary ORB descriptors unpacked to 256 bits as floats (Euclidean distance
    on bits is the square root of Hamming distance, so nearest centres stay meaningful); it sees
    at most `kmeans_sample` descriptors drawn at random with `seed`. Histograms are L1-normalised
    then square-rooted (Hellinger kernel); an image without keypoints gets a zero histogram. The
    linear classifier is standardisation + strongly regularised logistic regression (C=0.01, a
    few points better than C=1 on MNIST). After `fit` and `predict`, `facts` holds
    `{phase}_seconds`, `{phase}_keypoints_per_image` and `{phase}_no_keypoint_fraction` for
    phase fit / predict.
    """

    def __init__(
        self,
        settings: OrbSettings | None = None,
        vocab_size: int = 200,
        kmeans_sample: int = 100_000,
        seed: int = 0,
    ) -> None:
        self.settings = settings or OrbSettings()
        self.vocab_size = vocab_size
        self.kmeans_sample = kmeans_sample
        self.seed = seed
        self.facts: dict[str, float] = {}
        self.kmeans: MiniBatchKMeans | None = None
        self.classifier: Pipeline | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> BovwClassifier:
        """Learn the vocabulary and the classifier from N×C×H×W images and integer labels."""
        start = time.perf_counter()
        described = self._describe(x, "fit")
        self.kmeans = self._vocabulary(described)
        self.classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        self.classifier.fit(self._histograms(described), y)
        self.facts["fit_seconds"] = time.perf_counter() - start
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted integer labels for N×C×H×W images."""
        if self.classifier is None:
            raise RuntimeError("BovwClassifier.predict called before fit")
        start = time.perf_counter()
        labels = self.classifier.predict(self._histograms(self._describe(x, "predict")))
        self.facts["predict_seconds"] = time.perf_counter() - start
        return labels

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on N×C×H×W images with integer labels."""
        return float(np.mean(self.predict(x) == np.asarray(y)))

    def _describe(self, x: np.ndarray, phase: str) -> list[Described]:
        described = detect_and_describe(x, self.settings)
        counts = np.array([len(keypoints) for keypoints, _ in described])
        self.facts[f"{phase}_keypoints_per_image"] = float(counts.mean())
        self.facts[f"{phase}_no_keypoint_fraction"] = float(np.mean(counts == 0))
        return described

    def _vocabulary(self, described: list[Described]) -> MiniBatchKMeans:
        packed = np.concatenate([d for _, d in described if d is not None])
        if len(packed) < self.vocab_size:
            raise ValueError(
                f"vocab_size={self.vocab_size}: only {len(packed)} ORB descriptors in the "
                f"training images; use a smaller vocabulary or more images"
            )
        rng = np.random.default_rng(self.seed)
        sample = packed[rng.permutation(len(packed))[: self.kmeans_sample]]
        kmeans = MiniBatchKMeans(self.vocab_size, random_state=self.seed, n_init=3)
        return kmeans.fit(_bits(sample))

    def _histograms(self, described: list[Described]) -> np.ndarray:
        """N×vocab_size square roots of word frequencies (all 0 for images without keypoints)."""
        hist = np.zeros((len(described), self.vocab_size), dtype=np.float32)
        for row, (_, descriptors) in zip(hist, described, strict=True):
            if descriptors is not None:
                words = self.kmeans.predict(_bits(descriptors))
                row[:] = np.sqrt(np.bincount(words, minlength=self.vocab_size) / len(words))
        return hist


def _bits(descriptors: np.ndarray) -> np.ndarray:
    """K×32 packed uint8 ORB descriptors → K×256 float32 bits."""
    return np.unpackbits(descriptors, axis=1).astype(np.float32)
