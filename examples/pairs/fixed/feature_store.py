import io
import os

import numpy as np


class FeatureStore:
    """Stores feature matrices that clients upload as .npy payloads."""

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _path(self, dataset_id):
        return os.path.join(self.root, f"{int(dataset_id):08d}.npy")

    def ingest(self, dataset_id, uploaded_bytes):
        array = np.load(io.BytesIO(uploaded_bytes), allow_pickle=False)
        if array.ndim != 2:
            raise ValueError("expected a 2-D feature matrix")
        np.save(self._path(dataset_id), array, allow_pickle=False)
        return array.shape

    def load(self, dataset_id):
        return np.load(self._path(dataset_id), allow_pickle=False)

    def column_means(self, dataset_id):
        return self.load(dataset_id).mean(axis=0).tolist()
