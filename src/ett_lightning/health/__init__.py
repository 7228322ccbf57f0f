"""Tokenizer health during end-to-end tuning: what it measures (:class:`TokenizerHealth`) and the guard that acts on
it (:class:`TokenizerGuard`). docs/tokenizer_health.md."""

from ett_lightning.health.tokenizer_guard import TokenizerCollapse, TokenizerGuard
from ett_lightning.health.tokenizer_health import TokenizerHealth

__all__ = ["TokenizerCollapse", "TokenizerGuard", "TokenizerHealth"]
