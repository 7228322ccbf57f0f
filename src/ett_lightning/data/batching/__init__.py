"""Decoded samples to batches: collation, packing into rows with segment boundaries, prompt batches."""
