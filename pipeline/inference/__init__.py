"""Captioning with a trained checkpoint: the Captioner API, the batch engine and its
resumable Parquet store, and the caption-batch command."""
