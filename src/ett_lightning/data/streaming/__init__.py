"""From shard URLs to decoded samples: shard lists, the tar reader, shuffling, even validation splits, decoding."""
