"""Text samples to token sequences: conversations and templates, the chat template, labels, image slots."""
