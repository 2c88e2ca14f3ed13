"""segcache.client: cache-stable prompts, segments sent once, a cache audit, cache-aligned compaction."""

from segcache.client.audit import CacheAudit, CallRecord, Prices
from segcache.client.client import Client
from segcache.client.conversation import Conversation
from segcache.client.layout import PromptLayout, Stability
from segcache.client.segments import Segment, segment_hash

__all__ = ["CacheAudit", "CallRecord", "Client", "Conversation", "Prices", "PromptLayout", "Segment",
           "Stability", "segment_hash"]
