"""ternary-serve: OpenAI-compatible HTTP server over continuous batching (engine.runtime.batch)."""
