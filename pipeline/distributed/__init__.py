"""Beyond one process: data-parallel training under torchrun (ddp.py); caption-batch and the
features stage as Ray Data jobs (ray_engine.py, ray_features.py; ray_cluster.py, storage.py)."""
