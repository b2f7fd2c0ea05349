"""Write and index steps: the published folder (data/, failed/, id_mapping/), the faiss index,
its tuning and the layout readers."""
