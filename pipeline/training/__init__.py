"""Training the decoder: the teacher-forcing loop, end-to-end encoder fine-tuning and
self-critical sequence training."""
