"""One lock per object that keeps a call's state on itself, so that calls from several threads on it take turns
(docs/architecture.md §15): the Wan VAE (diffusers' `AutoencoderKLWan` keeps its causal-conv caches on the module),
a transformer's LoRA layers while a call scales them, and a `TunaPromptCache` while a step extends it."""

import threading
import weakref

_LOCKS = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def lock_for(owner: object) -> threading.RLock:
    """The re-entrant lock of `owner` (the same object for every caller, created on first use)."""
    with _GUARD:
        return _LOCKS.setdefault(owner, threading.RLock())
