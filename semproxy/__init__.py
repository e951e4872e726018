"""semproxy: a semantic cache and prompt-optimisation proxy for OpenAI-compatible LLM APIs."""

from semproxy.app import SemanticCacheMiddleware, build_app, build_cache
from semproxy.cache.service import SemanticCache
from semproxy.config import Settings, UpstreamConfig, load_settings

__all__ = [
    "SemanticCache", "SemanticCacheMiddleware", "Settings", "UpstreamConfig", "build_app", "build_cache",
    "load_settings",
]
__version__ = "0.1.0"
