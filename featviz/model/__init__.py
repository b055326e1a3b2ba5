"""The model layer: loading (the handle and per-architecture facts), the hooked forward
pass, KV-cache helpers, the dream sequence's token layout and the readable vocabulary."""
