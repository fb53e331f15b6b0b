"""Compressors: how a candidate is made from a fine-tuned reference (reached from conf/compressor/)."""
