"""Former home of the decoder; kept so `from pipeline.model import CaptionDecoder, DecoderConfig`
still works. New code uses pipeline.decoders (build_decoder, decoder_from_spec)."""
from pipeline.decoders import DecoderConfig
from pipeline.decoders.show_tell import ShowTell as CaptionDecoder

__all__ = ["CaptionDecoder", "DecoderConfig"]
