"""semproxy: a semantic cache and prompt-optimisation proxy for OpenAI-compatible LLM APIs."""

from semproxy.app import build_app, build_cache
from semproxy.cache.service import SemanticCache
from semproxy.config import Settings, load_settings
from semproxy.middleware.cache import SemanticCacheMiddleware

__all__ = ["SemanticCache", "SemanticCacheMiddleware", "Settings", "build_app", "build_cache", "load_settings"]
__version__ = "0.1.0"
