"""Image encoders: the registry of CNN trunks (registry.py), where their weights come from
(weights.py), the in-house EfficientNet-Lite (efficientnet_lite.py) and the spatial maps
the attention decoders read (feature_maps.py)."""
from pipeline.encoders.registry import (Encoder, EncoderConfig, Preprocess, build_classifier, build_encoder,
                                        list_encoders)

__all__ = ["Encoder", "EncoderConfig", "Preprocess", "build_classifier", "build_encoder", "list_encoders"]
